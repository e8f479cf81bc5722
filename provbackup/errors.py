"""Return values of a step, as written to `sstProvisioningReturnValue`.

The numbers and names are the wire contract (CONTRACT.md section 6): the control
instance and the web UI read them from LDAP and show the names, so both are kept
exactly as the original daemon had them, the misspelt 3 included.

Every failure of a step is an instance of one `StepError` subclass; the class
carries the number, its docstring is the message template. Success (0) is the
absence of an exception, so it has a name in the table but no class.

The daemon's own process exit codes are something else entirely and live in
`provbackup.exitcodes`.
"""

from __future__ import annotations

SUCCESS_CODE = 0

# number -> original name. 14 is unused in the original and stays unused.
RETURN_VALUES: dict[int, str] = {
    0: "SUCCESS_CODE",
    1: "UNDEFINED_ERROR",
    2: "MISSING_PARAMETER_IN_CONFIG_FILE",
    3: "CONFIGURED_RAM_DISK_IS_NOT_VALUD",
    4: "NOT_ENOUGH_SPACE_ON_RAM_DISK",
    5: "CANNOT_SAVE_MACHINE_STATE",
    6: "CANNOT_WRITE_TO_BACKUP_LOCATION",
    7: "CANNOT_COPY_FILE_TO_BACKUP_LOCATION",
    8: "CANNOT_COPY_IMAGE_TO_BACKUP_LOCATION",
    9: "CANNOT_COPY_XML_TO_BACKUP_LOCATION",
    10: "CANNOT_COPY_BACKEND_FILE_TO_BACKUP_LOCATION",
    11: "CANNOT_MERGE_DISK_IMAGES",
    12: "CANNOT_REMOVE_OLD_DISK_IMAGE",
    13: "CANNOT_REMOVE_FILE",
    15: "CANNOT_CREATE_EMPTY_DISK_IMAGE",
    16: "CANNOT_RENAME_DISK_IMAGE",
    17: "CANNOT_CONNECT_TO_BACKEND",
    18: "WRONG_STATE_INFORMATION",
    19: "CANNOT_SET_DISK_IMAGE_OWNERSHIP",
    20: "CANNOT_SET_DISK_IMAGE_PERMISSION",
    21: "CANNOT_RESTORE_MACHINE",
    22: "CANNOT_LOCK_MACHINE",
    23: "CANNOT_FIND_MACHINE",
    24: "CANNOT_COPY_STATE_FILE_TO_RETAIN",
    25: "RETAIN_ROOT_DIRECTORY_DOES_NOT_EXIST",
    26: "BACKUP_ROOT_DIRECTORY_DOES_NOT_EXIST",
    27: "CANNOT_CREATE_DIRECTORY",
    28: "CANNOT_SAVE_XML",
    29: "CANNOT_SAVE_BACKEND_ENTRY",
    30: "CANNOT_SET_DIRECTORY_OWNERSHIP",
    31: "CANNOT_SET_DIRECTORY_PERMISSION",
    32: "CANNOT_FIND_CONFIGURATION_ENTRY",
    33: "BACKEND_XML_UNCONSISTENCY",
    34: "CANNOT_CREATE_TARBALL",
    35: "UNSUPPORTED_FILE_TRANSFER_PROTOCOL",
    36: "UNKNOWN_BACKEND_TYPE",
    37: "MISSING_NECESSARY_FILES",
    38: "CORRUPT_DISK_IMAGE_FOUND",
    39: "UNSUPPORTED_CONFIGURATION_PARAMETER",
    40: "CANNOT_MOVE_DISK_IMAGE_TO_ORIGINAL_LOCATION",
    41: "CANNOT_DEFINE_MACHINE",
    42: "CANNOT_START_MACHINE",
    43: "CANNOT_WORK_ON_UNDEFINED_OBJECT",
    44: "CANNOT_READ_STATE_FILE",
    45: "CANNOT_READ_XML_FILE",
    46: "NOT_ALL_FILES_DELETED_FROM_RETAIN_LOCATION",
    47: "NOT_ENOUGH_DISK_SPACE",
    48: "NO_DISK_SPACE_INFORMATION",
}


def return_value_name(code: int) -> str:
    """The original name of a return value, or UNKNOWN_RETURN_VALUE_<n>."""
    return RETURN_VALUES.get(code, f"UNKNOWN_RETURN_VALUE_{code}")


class StepError(Exception):
    """a step failed"""

    code: int = 1

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(self.message)

    @property
    def name(self) -> str:
        """The original name of this return value (the web UI shows it)."""
        return RETURN_VALUES[self.code]

    @property
    def message(self) -> str:
        """The class's summary (its docstring), then what happened this time."""
        summary = (type(self).__doc__ or "").strip()
        return f"{summary}: {self.detail}" if self.detail else summary

    def __str__(self) -> str:
        return f"{self.message} [{self.code} {self.name}]"


class UndefinedError(StepError):
    """unexpected failure"""

    code = 1


class MissingParameterInConfigFileError(StepError):
    """a required configuration parameter is missing"""

    code = 2


class RamDiskNotValidError(StepError):
    """the configured RAM disk location is not usable"""

    code = 3


class NotEnoughSpaceOnRamDiskError(StepError):
    """not enough space on the RAM disk"""

    code = 4


class CannotSaveMachineStateError(StepError):
    """cannot save the machine's memory state"""

    code = 5


class CannotWriteToBackupLocationError(StepError):
    """cannot write to the backup location"""

    code = 6


class CannotCopyFileToBackupLocationError(StepError):
    """cannot copy a file to the backup location"""

    code = 7


class CannotCopyImageToBackupLocationError(StepError):
    """cannot copy a disk image to the backup location"""

    code = 8


class CannotCopyXmlToBackupLocationError(StepError):
    """cannot copy the domain XML to the backup location"""

    code = 9


class CannotCopyBackendFileToBackupLocationError(StepError):
    """cannot copy the LDIF export to the backup location"""

    code = 10


class CannotMergeDiskImagesError(StepError):
    """cannot merge the disk images"""

    code = 11


class CannotRemoveOldDiskImageError(StepError):
    """cannot remove the old disk image"""

    code = 12


class CannotRemoveFileError(StepError):
    """cannot remove a file"""

    code = 13


class CannotCreateEmptyDiskImageError(StepError):
    """cannot create the new disk image"""

    code = 15


class CannotRenameDiskImageError(StepError):
    """cannot rename a disk image"""

    code = 16


class CannotConnectToBackendError(StepError):
    """cannot connect to the directory or the hypervisor"""

    code = 17


class WrongStateInformationError(StepError):
    """the request is not a known step"""

    code = 18


class CannotSetDiskImageOwnershipError(StepError):
    """cannot set the owner of a file"""

    code = 19


class CannotSetDiskImagePermissionError(StepError):
    """cannot set the permissions of a file"""

    code = 20


class CannotRestoreMachineError(StepError):
    """cannot restore the machine"""

    code = 21


class CannotLockMachineError(StepError):
    """cannot lock the machine"""

    code = 22


class CannotFindMachineError(StepError):
    """the machine is not defined on this node"""

    code = 23


class CannotCopyStateFileToRetainError(StepError):
    """cannot copy the state file to the retain location"""

    code = 24


class RetainRootDirectoryDoesNotExistError(StepError):
    """the retain root directory does not exist"""

    code = 25


class BackupRootDirectoryDoesNotExistError(StepError):
    """the backup root directory does not exist"""

    code = 26


class CannotCreateDirectoryError(StepError):
    """cannot create a directory"""

    code = 27


class CannotSaveXmlError(StepError):
    """cannot save the domain XML"""

    code = 28


class CannotSaveBackendEntryError(StepError):
    """cannot save the LDIF export of the machine"""

    code = 29


class CannotSetDirectoryOwnershipError(StepError):
    """cannot set the owner of a directory"""

    code = 30


class CannotSetDirectoryPermissionError(StepError):
    """cannot set the permissions of a directory"""

    code = 31


class CannotFindConfigurationEntryError(StepError):
    """no backup configuration entry applies"""

    code = 32


class BackendXmlInconsistencyError(StepError):
    """the disks in the directory and in libvirt differ"""

    code = 33


class CannotCreateTarballError(StepError):
    """cannot create the tarball"""

    code = 34


class UnsupportedFileTransferProtocolError(StepError):
    """unsupported file transfer protocol"""

    code = 35


class UnknownBackendTypeError(StepError):
    """unknown backend or disk type"""

    code = 36


class MissingNecessaryFilesError(StepError):
    """files needed for this step are missing"""

    code = 37


class CorruptDiskImageFoundError(StepError):
    """a disk image is corrupt"""

    code = 38


class UnsupportedConfigurationParameterError(StepError):
    """unsupported configuration value"""

    code = 39


class CannotMoveDiskImageToOriginalLocationError(StepError):
    """cannot move a disk image to its original location"""

    code = 40


class CannotDefineMachineError(StepError):
    """cannot define the machine"""

    code = 41


class CannotStartMachineError(StepError):
    """cannot start the machine"""

    code = 42


class CannotWorkOnUndefinedObjectError(StepError):
    """the object to work on is not defined"""

    code = 43


class CannotReadStateFileError(StepError):
    """cannot read the state file"""

    code = 44


class CannotReadXmlFileError(StepError):
    """cannot read the domain XML file"""

    code = 45


class NotAllFilesDeletedFromRetainLocationError(StepError):
    """not all files were removed from the retain location"""

    code = 46


class NotEnoughDiskSpaceError(StepError):
    """not enough disk space"""

    code = 47


class NoDiskSpaceInformationError(StepError):
    """no disk space information"""

    code = 48


def step_error_classes() -> dict[int, type[StepError]]:
    """Every concrete StepError subclass by its return value."""
    found: dict[int, type[StepError]] = {}
    for cls in StepError.__subclasses__():
        if cls.code in found:
            raise AssertionError(f"return value {cls.code} has two classes")
        found[cls.code] = cls
    return found


def error_for_code(code: int, detail: str = "") -> StepError:
    """An instance of the class for `code` (UndefinedError for unknown codes)."""
    return step_error_classes().get(code, UndefinedError)(detail)
