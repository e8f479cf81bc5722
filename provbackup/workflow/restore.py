"""The restore steps: unretainSmallFiles, unretainLargeFiles, restore (CONTRACT.md 2, 4, 5).

The web UI copies the small files back first (it reads the LDIF from the working
directory), then the large ones; the broker destroys and undefines the domain and
requests `restore`, which puts the images at the disk paths in LDAP and resumes the
VM from its memory state, or boots it from the backed-up XML.

Nothing is ever the only copy while it is replaced: the images a restore replaces
are first renamed aside and removed only after the VM runs again.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from provbackup import errors
from provbackup.hypervisor import domxml, qemuimg
from provbackup.hypervisor.base import PowerState
from provbackup.workflow import storage
from provbackup.workflow.context import StepContext, remove_working
from provbackup.workflow.layout import PLACEHOLDER_STATE, Layout


def unretain_small_files(ctx: StepContext) -> dict[str, float]:
    """Copy `<vm>.xml.<ou>` and `<vm>.ldif.<ou>` into the working directory."""
    start = ctx.clock()
    layout = ctx.layout()
    _require_backup(layout)
    storage.require_root(layout.retain_root, errors.RetainRootDirectoryDoesNotExistError)
    storage.make_directories(layout.retain_root, layout.intermediate, *ctx.dir_mode())
    for kind in ("xml", "ldif"):
        _copy_in(ctx, layout.small_file(kind, layout.backup), layout.small_file(kind))
    return {"unretainSmallFiles": ctx.clock() - start}


def unretain_large_files(ctx: StepContext) -> dict[str, float]:
    """Copy the state file and every disk image in, verified against the manifest."""
    start = ctx.clock()
    layout = ctx.layout()
    _require_backup(layout)
    manifest = _manifest(layout)
    images = [layout.backup / f"{path.name}.{ctx.date}" for path in _backed_up_disks(layout)]
    sources = [layout.small_file("state", layout.backup), *images]
    if missing := [str(p) for p in sources if not p.exists()]:
        raise errors.MissingNecessaryFilesError(f"not in the backup: {', '.join(missing)}")
    storage.require_root(layout.retain_root, errors.RetainRootDirectoryDoesNotExistError)
    storage.check_space(layout.working, storage.space_needed(
        sum(p.stat().st_blocks * 512 for p in sources), 0))
    storage.make_directories(layout.retain_root, layout.intermediate, *ctx.dir_mode())
    for source in sources:
        expected = manifest.get(source.name)
        if expected is None:
            raise errors.MissingNecessaryFilesError(f"{source.name} is not in {layout.manifest}")
        copied = _copy_in(ctx, source, layout.working / source.name)
        if copied != expected:
            (layout.working / source.name).unlink(missing_ok=True)
            raise errors.CorruptDiskImageFoundError(
                f"{source}: sha256 {copied} does not match the manifest ({expected})")
    for image in images:
        qemuimg.check(layout.working / image.name)
    return {"unretainLargeFiles": ctx.clock() - start}


def restore(ctx: StepContext) -> dict[str, float]:
    """Put the images in place and bring the VM back: from its memory state, or booted."""
    start = ctx.clock()
    layout = ctx.layout()
    hv = ctx.hypervisor
    if hv.exists(ctx.vm) and hv.domain(ctx.vm).state is PowerState.RUNNING:
        asides = [_aside(Path(d.source), ctx.date) for d in ctx.machine.disks]
        if not any(a.exists() for a in asides):
            raise errors.CannotLockMachineError(
                f"{ctx.vm} is running; it must be destroyed before its disks are replaced")
        # Our own restore got this far before it was interrupted: only tidying is left.
        ctx.log.info("the restored VM already runs; finishing the interrupted restore")
        _finish(ctx, layout, asides)
        return {"restore": ctx.clock() - start}
    xml_file, state_file = layout.small_file("xml"), layout.small_file("state")
    try:
        backed_up_xml = xml_file.read_text(encoding="utf-8")
    except OSError as e:
        raise errors.CannotReadXmlFileError(f"{xml_file}: {e.strerror}") from None
    ldap_paths = {d.target: Path(d.source) for d in ctx.machine.disks}
    images = {target: layout.working / f"{path.name}.{ctx.date}"
              for target, path in domxml.read_disks(backed_up_xml).items()}
    if set(images) != set(ldap_paths):
        raise errors.BackendXmlInconsistencyError(
            f"the backup has disks {sorted(images)}, the directory {sorted(ldap_paths)}")
    # An image already moved into place by an interrupted restore has its predecessor
    # aside: that counts as present (the step is run again after a crash).
    missing = [str(image) for target, image in images.items()
               if not image.exists() and not _aside(ldap_paths[target], ctx.date).exists()]
    if not state_file.exists():
        missing.append(str(state_file))
    if missing:
        raise errors.MissingNecessaryFilesError(f"not in the working directory: {', '.join(missing)}")

    replaced = _put_in_place(images, ldap_paths, ctx.date)
    _bring_back(ctx, state_file, backed_up_xml, ldap_paths)
    _finish(ctx, layout, replaced)
    return {"restore": ctx.clock() - start}


def _finish(ctx: StepContext, layout: Layout, replaced: list[Path]) -> None:
    """The VM runs on the restored images: drop the old ones and the working directory."""
    for old in replaced:
        old.unlink(missing_ok=True)
    remove_working(layout)


def _bring_back(ctx: StepContext, state_file: Path, backed_up_xml: str,
                ldap_paths: dict[str, Path]) -> None:
    """Resume from the memory state, unless told not to or there is none; else boot."""
    hv = ctx.hypervisor
    placeholder = state_file.stat().st_size == len(PLACEHOLDER_STATE) and \
        state_file.read_bytes() == PLACEHOLDER_STATE
    # Defined first, so the VM is persistent again even when resumed from its state
    # (the broker undefined it; a restore alone would make it transient).
    hv.define(domxml.with_disk_sources(backed_up_xml, ldap_paths))
    if not ctx.policy.restore_without_state and not placeholder:
        try:
            xml = domxml.with_disk_sources(hv.saved_definition(state_file), ldap_paths)
            hv.restore(state_file, xml)
            ctx.log.info("resumed from the memory state of %s", ctx.date)
            return
        except errors.StepError as e:
            if not ctx.policy.force_start:
                raise
            ctx.log.warning("restoring the memory state failed (%s); ForceStart: booting", e)
    hv.start(ctx.vm)
    ctx.log.info("booted from the restored disks")


def _put_in_place(images: dict[str, Path], ldap_paths: dict[str, Path], date: str) -> list[Path]:
    """Move each restored image to its LDAP path, the current image renamed aside first."""
    replaced = []
    for target, image in sorted(images.items()):
        final = ldap_paths[target]
        aside = _aside(final, date)
        try:
            if final.exists() and not aside.exists():
                os.rename(final, aside)
            if aside.exists():
                replaced.append(aside)
            if image.exists():  # else moved already, before an interruption
                _move(image, final)
        except OSError as e:
            raise errors.CannotMoveDiskImageToOriginalLocationError(
                f"{image} -> {final}: {e.strerror} (the previous image is kept as {aside})") \
                from None
    return replaced


def _aside(final: Path, date: str) -> Path:
    """Where the image a restore replaces waits until the VM runs again."""
    return final.with_name(f"{final.name}.before-restore.{date}")


def _move(source: Path, final: Path) -> None:
    """Rename (retain and images share a filesystem); copy and publish if they do not."""
    try:
        os.rename(source, final)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        result = storage.sparse_copy(source, final, checksum=False,
                                     error=errors.CannotMoveDiskImageToOriginalLocationError)
        storage.publish(result.temp, final, error=errors.CannotMoveDiskImageToOriginalLocationError)
        source.unlink()


def _require_backup(layout: Layout) -> None:
    if not layout.backup.is_dir():
        raise errors.MissingNecessaryFilesError(f"no backup directory {layout.backup}")


def _manifest(layout: Layout) -> dict[str, str]:
    if not layout.manifest.exists():
        raise errors.MissingNecessaryFilesError(f"no manifest {layout.manifest}: the backup "
                                                f"did not complete")
    return storage.read_manifest(layout.manifest)


def _backed_up_disks(layout: Layout) -> list[Path]:
    xml_file = layout.small_file("xml", layout.backup)
    try:
        return list(domxml.read_disks(xml_file.read_text(encoding="utf-8")).values())
    except OSError as e:
        raise errors.CannotReadXmlFileError(f"{xml_file}: {e.strerror}") from None


def _copy_in(ctx: StepContext, source: Path, final: Path) -> str:
    """Copy one file from the backup into the working directory; its sha256."""
    if not source.exists():
        raise errors.MissingNecessaryFilesError(f"{source} is missing")
    result = storage.sparse_copy(source, final, error=errors.CannotCopyFileToBackupLocationError)
    owner, group, mode = ctx.file_mode()
    storage.apply_ownership(result.temp, owner, group, mode, directory=False)
    storage.publish(result.temp, final)
    return result.sha256
