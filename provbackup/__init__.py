"""provbackup: the backup daemon of a stoney cloud / FOSS-Cloud KVM node."""

__version__ = "0.1.0"
