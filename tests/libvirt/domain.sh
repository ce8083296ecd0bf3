#!/bin/bash
# tests/libvirt/domain.sh NAME [VNC_SOCKET] < ELEMENTS -- a minimal libvirt domain around the
# device elements on standard input (gpuvirtctl xml's <hostdev>s), copied verbatim into <devices>.
#
# Type `qemu` (TCG: no KVM needed), q35, 64 MiB, no disk, no OS, no USB, no balloon: nothing but
# what gpuvirt printed, plus what libvirt requires around it: a <graphics> for a vGPU's
# display='on' (libvirt refuses display='on' without one; a VNC UNIX socket, no TCP port) and
# <video> model none so that the graphics adds no emulated VGA; either is left out when the
# elements bring their own (gpuvirtctl xml --graphics ...). The VM tier's libvirt scenario
# starts this domain; scripts/validate-libvirt-xml.sh validates every golden snippet in it.
set -euo pipefail
name=${1:?usage: domain.sh NAME [VNC_SOCKET] < elements}
vnc=${2:-/run/libvirt/qemu/$name-vnc.sock}
elements=$(cat)
graphics="<graphics type='vnc' socket='$vnc'/>"
video="<video>
      <model type='none'/>
    </video>"
case $elements in *"<graphics"*) graphics= ;; esac
case $elements in *"<video"*) video= ;; esac
cat <<HEAD
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    $graphics
    $video
    <memballoon model='none'/>
HEAD
printf '%s\n' "$elements"
cat <<TAIL
  </devices>
</domain>
TAIL
