# gpuvirt: build, generated files (man pages, completions, API reference) and installation.
#
#   make                      release build + man pages + completions (under target/gen)
#   make install              into $(DESTDIR)$(PREFIX); PREFIX defaults to /usr/local
#   make install PREFIX=/usr  the layout the Debian package uses (packaging/build-deb.sh)
#   make install-files        install what is already built (no cargo run; for packaging as
#                             another user than the one that built)
#   make uninstall            removes exactly what install-files installs
#   make docs                 regenerates docs/dbus-api.md from dbus/org.gpuvirt.GpuVirt1.xml
#   make check-docs           fails when docs/dbus-api.md is stale
#   make deb                  packaging/build-deb.sh (cargo-deb, from this Makefile's file list)
#   make list-files           prints every installed path (relative to DESTDIR), one a line
#                             (files and the one symlink, the libvirt hook entry)
#   PROFILE=dev               use the debug build (tests: no second, release compile)
#   COCKPITDIR=...            where the Cockpit page goes ($(DATADIR)/cockpit; it lands in gpuvirt/)
#
# Files that services read only from fixed system directories (systemd units, udev rules,
# D-Bus policy/activation, polkit actions) go there whatever PREFIX is: dbus-daemon, udev and
# polkitd never look under /usr/local/share. Fedora/RHEL: SYSTEMDUNITDIR=/usr/lib/systemd/system
# UDEVRULESDIR=/usr/lib/udev/rules.d ZSHCOMPDIR=$(DATADIR)/zsh/site-functions.
#
# Nothing is installed to /etc but one program link: the policy (/etc/gpuvirt/policy.toml) is the
# operator's, and the annotated example goes to $(DOCDIR)/examples. The exception is the libvirt
# hook entry $(LIBVIRTHOOKDIR)/50-gpuvirt, a symlink to $(LIBEXECDIR)/gpuvirt-libvirt-hook:
# libvirtd runs hooks only from /etc/libvirt/hooks/qemu.d (no /usr or /run directory exists for
# them), and the entry is a link to a program, not configuration (the hook reads none; the
# policy stays the operator's). Removing the entry disables the hook (libvirtd reads the
# directory when it starts: restart it after installing or removing).

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/libexec
SYSCONFDIR ?= /etc
LIBVIRTHOOKDIR ?= $(SYSCONFDIR)/libvirt/hooks/qemu.d
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
DOCDIR ?= $(DATADIR)/doc/gpuvirt
# systemd searches /usr/local/lib/systemd/system too; for PREFIX=/usr, Debian's /lib.
SYSTEMDUNITDIR ?= $(if $(filter /usr,$(PREFIX)),/lib/systemd/system,$(PREFIX)/lib/systemd/system)
UDEVRULESDIR ?= /lib/udev/rules.d
DBUSDATADIR ?= /usr/share/dbus-1
POLKITACTIONSDIR ?= /usr/share/polkit-1/actions
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR ?= $(DATADIR)/zsh/vendor-completions
FISHCOMPDIR ?= $(DATADIR)/fish/vendor_completions.d
# Cockpit looks in /usr/share/cockpit and /usr/local/share/cockpit, so this one follows PREFIX.
COCKPITDIR ?= $(DATADIR)/cockpit

CARGO ?= cargo
PYTHON ?= python3
INSTALL ?= install
PROFILE ?= release
CARGO_TARGET_DIR ?= target
# cargo puts the dev profile in target/debug; every other profile in target/<name>.
BUILDDIR := $(CARGO_TARGET_DIR)/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))
GENDIR := $(CARGO_TARGET_DIR)/gen

# Contract files; wildcards so a file another change adds (a second rules file, the polkit
# actions) is installed without editing this Makefile.
UNIT := systemd/gpuvirtd.service
EXPORTER_UNIT := systemd/gpuvirt-exporter.service
# Prometheus alert/recording rules (docs/fleet.md); their promtool test ships beside them.
PROM_RULES := packaging/prometheus/gpuvirt.rules.yml packaging/prometheus/gpuvirt.rules.test.yml
PROMDIR ?= $(DATADIR)/gpuvirt/prometheus
DBUS_CONF := $(wildcard dbus/*.conf)
DBUS_SERVICE := $(wildcard dbus/*.service)
DBUS_XML := $(wildcard dbus/*.xml)
POLKIT_ACTIONS := $(wildcard dbus/*.policy polkit/*.policy)
UDEV_RULES := $(wildcard udev/*.rules)
EXAMPLES := config/policy.toml
DOCS := README.md $(wildcard docs/*.md)
# The Cockpit page: its runtime files only (tests live in tests/cockpit).
COCKPIT_FILES := $(wildcard cockpit/gpuvirt/*.html cockpit/gpuvirt/*.js cockpit/gpuvirt/*.css cockpit/gpuvirt/manifest.json)

CARGO_PROFILE_FLAG := $(if $(filter release,$(PROFILE)),--release,--profile $(PROFILE))

.PHONY: all build gen install install-files uninstall docs check-docs deb list-files clean-gen

all: build gen

build:
	$(CARGO) build $(CARGO_PROFILE_FLAG) --locked -p gpuvirtctl -p gpuvirtd -p gpuvirt-libvirt-hook -p gpuvirt-exporter

# Regenerated every time from the binaries just built: the clap definitions are the source.
gen: build
	rm -rf $(GENDIR)
	$(BUILDDIR)/gpuvirtctl __generate man $(GENDIR)/man
	$(BUILDDIR)/gpuvirtd __generate man $(GENDIR)/man
	$(BUILDDIR)/gpuvirtctl __generate completions $(GENDIR)/completions
	$(PYTHON) packaging/md2man.py docs/policy.md $(GENDIR)/man/gpuvirt-policy.5

install: all
	$(MAKE) install-files

# ExecStart is rewritten to where the daemon really lands, whatever the unit in the tree says.
install-files:
	@for b in gpuvirtd gpuvirtctl gpuvirt-libvirt-hook gpuvirt-exporter; do test -x $(BUILDDIR)/$$b || { echo "make: $(BUILDDIR)/$$b is not built; run make first" >&2; exit 1; }; done
	@test -d $(GENDIR)/man || { echo "make: $(GENDIR) is missing; run make first" >&2; exit 1; }
	$(INSTALL) -Dm755 $(BUILDDIR)/gpuvirtctl $(DESTDIR)$(BINDIR)/gpuvirtctl
	$(INSTALL) -Dm755 $(BUILDDIR)/gpuvirtd $(DESTDIR)$(LIBEXECDIR)/gpuvirtd
	$(INSTALL) -Dm755 $(BUILDDIR)/gpuvirt-libvirt-hook $(DESTDIR)$(LIBEXECDIR)/gpuvirt-libvirt-hook
	$(INSTALL) -d $(DESTDIR)$(LIBVIRTHOOKDIR)
	ln -sfn $(LIBEXECDIR)/gpuvirt-libvirt-hook $(DESTDIR)$(LIBVIRTHOOKDIR)/50-gpuvirt
	$(INSTALL) -d $(DESTDIR)$(SYSTEMDUNITDIR)
	sed -E 's#^ExecStart=[^ ]*/gpuvirtd( |$$)#ExecStart=$(LIBEXECDIR)/gpuvirtd\1#' $(UNIT) > $(DESTDIR)$(SYSTEMDUNITDIR)/gpuvirtd.service
	chmod 644 $(DESTDIR)$(SYSTEMDUNITDIR)/gpuvirtd.service
	$(INSTALL) -Dm755 $(BUILDDIR)/gpuvirt-exporter $(DESTDIR)$(BINDIR)/gpuvirt-exporter
	sed -E 's#^ExecStart=[^ ]*/gpuvirt-exporter( |$$)#ExecStart=$(BINDIR)/gpuvirt-exporter\1#' $(EXPORTER_UNIT) > $(DESTDIR)$(SYSTEMDUNITDIR)/gpuvirt-exporter.service
	chmod 644 $(DESTDIR)$(SYSTEMDUNITDIR)/gpuvirt-exporter.service
	$(INSTALL) -Dm644 -t $(DESTDIR)$(PROMDIR) $(PROM_RULES)
	$(INSTALL) -d $(DESTDIR)$(DBUSDATADIR)/system.d $(DESTDIR)$(DBUSDATADIR)/system-services $(DESTDIR)$(DBUSDATADIR)/interfaces
	$(INSTALL) -m644 $(DBUS_CONF) $(DESTDIR)$(DBUSDATADIR)/system.d/
	$(INSTALL) -m644 $(DBUS_SERVICE) $(DESTDIR)$(DBUSDATADIR)/system-services/
	$(INSTALL) -m644 $(DBUS_XML) $(DESTDIR)$(DBUSDATADIR)/interfaces/
	$(if $(POLKIT_ACTIONS),$(INSTALL) -Dm644 -t $(DESTDIR)$(POLKITACTIONSDIR) $(POLKIT_ACTIONS))
	$(INSTALL) -Dm644 -t $(DESTDIR)$(UDEVRULESDIR) $(UDEV_RULES)
	$(INSTALL) -Dm644 -t $(DESTDIR)$(DOCDIR)/examples $(EXAMPLES)
	$(INSTALL) -Dm644 -t $(DESTDIR)$(DOCDIR) $(DOCS)
	$(INSTALL) -Dm644 $(GENDIR)/completions/bash/gpuvirtctl $(DESTDIR)$(BASHCOMPDIR)/gpuvirtctl
	$(INSTALL) -Dm644 $(GENDIR)/completions/zsh/_gpuvirtctl $(DESTDIR)$(ZSHCOMPDIR)/_gpuvirtctl
	$(INSTALL) -Dm644 $(GENDIR)/completions/fish/gpuvirtctl.fish $(DESTDIR)$(FISHCOMPDIR)/gpuvirtctl.fish
	$(INSTALL) -Dm644 -t $(DESTDIR)$(MANDIR)/man1 $(wildcard $(GENDIR)/man/*.1)
	$(INSTALL) -Dm644 -t $(DESTDIR)$(MANDIR)/man5 $(wildcard $(GENDIR)/man/*.5)
	$(INSTALL) -Dm644 -t $(DESTDIR)$(MANDIR)/man8 $(wildcard $(GENDIR)/man/*.8)
	$(INSTALL) -Dm644 -t $(DESTDIR)$(COCKPITDIR)/gpuvirt $(filter-out %/manifest.json,$(COCKPIT_FILES))
	# The page shows only where gpuvirt's D-Bus policy is installed: name where it really goes.
	sed 's#"/usr/share/dbus-1/#"$(DBUSDATADIR)/#' cockpit/gpuvirt/manifest.json > $(DESTDIR)$(COCKPITDIR)/gpuvirt/manifest.json
	chmod 644 $(DESTDIR)$(COCKPITDIR)/gpuvirt/manifest.json

# The same list install-files produces, for uninstall and for checks.
list-files:
	@printf '%s\n' \
	  $(BINDIR)/gpuvirtctl \
	  $(LIBEXECDIR)/gpuvirtd \
	  $(LIBEXECDIR)/gpuvirt-libvirt-hook \
	  $(LIBVIRTHOOKDIR)/50-gpuvirt \
	  $(SYSTEMDUNITDIR)/gpuvirtd.service \
	  $(BINDIR)/gpuvirt-exporter \
	  $(SYSTEMDUNITDIR)/gpuvirt-exporter.service \
	  $(addprefix $(PROMDIR)/,$(notdir $(PROM_RULES))) \
	  $(addprefix $(DBUSDATADIR)/system.d/,$(notdir $(DBUS_CONF))) \
	  $(addprefix $(DBUSDATADIR)/system-services/,$(notdir $(DBUS_SERVICE))) \
	  $(addprefix $(DBUSDATADIR)/interfaces/,$(notdir $(DBUS_XML))) \
	  $(addprefix $(POLKITACTIONSDIR)/,$(notdir $(POLKIT_ACTIONS))) \
	  $(addprefix $(UDEVRULESDIR)/,$(notdir $(UDEV_RULES))) \
	  $(addprefix $(DOCDIR)/examples/,$(notdir $(EXAMPLES))) \
	  $(addprefix $(DOCDIR)/,$(notdir $(DOCS))) \
	  $(BASHCOMPDIR)/gpuvirtctl $(ZSHCOMPDIR)/_gpuvirtctl $(FISHCOMPDIR)/gpuvirtctl.fish \
	  $(addprefix $(MANDIR)/man1/,$(notdir $(wildcard $(GENDIR)/man/*.1))) \
	  $(addprefix $(MANDIR)/man5/,$(notdir $(wildcard $(GENDIR)/man/*.5))) \
	  $(addprefix $(MANDIR)/man8/,$(notdir $(wildcard $(GENDIR)/man/*.8))) \
	  $(addprefix $(COCKPITDIR)/gpuvirt/,$(notdir $(COCKPIT_FILES)))

uninstall:
	@$(MAKE) -s list-files | while read -r f; do rm -fv "$(DESTDIR)$$f"; done

docs:
	$(PYTHON) packaging/dbus2md.py dbus/org.gpuvirt.GpuVirt1.xml crates/gpuvirt-api/src/lib.rs $(firstword $(POLKIT_ACTIONS)) > docs/dbus-api.md

check-docs:
	@$(PYTHON) packaging/dbus2md.py dbus/org.gpuvirt.GpuVirt1.xml crates/gpuvirt-api/src/lib.rs $(firstword $(POLKIT_ACTIONS)) | diff -u docs/dbus-api.md - \
	  || { echo "docs/dbus-api.md is stale: run make docs" >&2; exit 1; }

deb:
	packaging/build-deb.sh

clean-gen:
	rm -rf $(GENDIR)
