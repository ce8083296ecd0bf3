#!/usr/bin/env bash
# scripts/validate-libvirt-xml.sh -- every golden libvirt snippet gpuvirtctl prints
# (crates/gpuvirtctl/tests/golden/*/xml*.txt and */*.xml, every fixture and option form), put in a
# minimal domain (tests/libvirt/domain.sh) and checked against libvirt's own RNG schemas with
# virt-xml-validate (Debian: libvirt-clients, schemas from libvirt0, xmllint from libxml2-utils).
# The VM tier starts such a domain in a real libvirtd; this is the cheap half, run by the lint tier.
# Without virt-xml-validate it says SKIPPED loudly and exits 0; GPUVIRT_REQUIRE_VIRT_XML_VALIDATE=1
# makes that a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v virt-xml-validate >/dev/null 2>&1 || ! command -v xmllint >/dev/null 2>&1; then
    msg="virt-xml-validate or xmllint is not installed (apt-get install libvirt-clients libxml2-utils)"
    if [ "${GPUVIRT_REQUIRE_VIRT_XML_VALIDATE:-0}" = 1 ]; then echo "FAIL: $msg" >&2; exit 1; fi
    echo "!!! LIBVIRT XML VALIDATION SKIPPED: $msg !!!"
    exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
n=0 bad=0 refused=0
shopt -s nullglob
for f in crates/gpuvirtctl/tests/golden/*/xml*.txt crates/gpuvirtctl/tests/golden/*/*.xml; do
    # A golden of a refusal (`exit N` and the error) holds no XML.
    if head -1 "$f" | grep -q '^exit [0-9]'; then refused=$((refused + 1)); continue; fi
    n=$((n + 1))
    dom=$tmp/$(echo "$f" | tr / _).xml
    tests/libvirt/domain.sh "golden-$n" < "$f" > "$dom"
    if out=$(virt-xml-validate "$dom" domain 2>&1); then
        :
    else
        bad=$((bad + 1))
        echo "FAIL: $f does not validate as a libvirt domain: $out" >&2
    fi
done
[ "$n" -gt 0 ] || { echo "FAIL: no golden libvirt snippets found" >&2; exit 1; }
echo "libvirt XML validation: $((n - bad)) golden snippets valid, $bad invalid, $refused refusals skipped (virt-xml-validate, $(virt-xml-validate --version 2>/dev/null || echo libvirt schemas))"
[ "$bad" = 0 ]
