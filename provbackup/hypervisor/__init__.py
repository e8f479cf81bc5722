"""Everything libvirt and qemu-img: nothing outside this package imports libvirt."""
