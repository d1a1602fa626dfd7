"""Dataset layout, patient-level splits and safe writing of NIfTI volumes and datalists."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import NibabelWriter, load_decathlon_datalist, pad_list_data_collate
from monai.data.folder_layout import default_name_formatter

__all__ = [
    "LGG_AFFINE",
    "AtomicNibabelWriter",
    "CaseNameFormatter",
    "DataError",
    "OutputWriteError",
    "atomic_path",
    "atomic_write_json",
    "check_output_dirs",
    "check_output_names",
    "find_volumes",
    "load_split",
    "read_datalist",
    "remove_leftovers",
    "nifti_stem",
    "pad_collate",
    "split_patients",
    "write_nifti",
]

# Kaggle LGG slices are axial, rows running anterior -> posterior and columns patient-right -> patient-left, stacked
# inferior -> superior; the spacing is not published, so 1 mm is assumed. With this affine (voxel (row, col, slice)
# -> RAS) viewers such as 3D Slicer show the volumes upright, while array indices keep the TIFFs' own order.
LGG_AFFINE = np.array([[0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


class DataError(ValueError):
    """
    A file or folder a run cannot use (bad input data, an unwritable output folder), or a setting that cannot describe
    one; the message names it.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        # control characters (a newline in a file name) would split the one-line report or forge another line
        super().__init__(_CONTROL_CHARACTERS.sub(lambda c: repr(c.group())[1:-1], f"{self.path}: {problem}"))


class OutputWriteError(BaseException):
    """
    The file system refused to write an output (a full disk, a quota, a file size limit); ``error`` names the file.

    A ``BaseException`` rather than an ``Exception`` so that MONAI's ``SaveImage``, which takes any exception of a
    writer for a format it cannot write and then reports that no writer fits, passes it on unchanged.

    Args:
        error: the :class:`DataError` naming the file and the reason.
    """

    def __init__(self, error: DataError):
        super().__init__(str(error))
        self.error = error


# temporary files of atomic writes: .<final name>.partial-<pid>-<random><suffixes>
_PARTIAL_FILE = re.compile(r"^\..+\.partial-(?P<pid>\d+)-")
# those of Ignite's atomic DiskSaver (checkpoints): tempfile's default names
_IGNITE_TEMPORARY_FILE = re.compile(r"^tmp[a-z0-9_]{8}$")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """
    Yield a temporary path beside ``path`` to write to; on success it replaces ``path`` (with the permissions a new
    file would get), on failure it is removed. A reader never sees a half-written ``path``; a temporary file that a
    killed process leaves behind is removed by :func:`remove_leftovers` at the next run.

    Args:
        path: the final destination; its suffixes (``.nii.gz``) are kept so writers pick the right format.

    Raises:
        OutputWriteError: naming ``path`` when the file system refuses the write (full disk, quota).
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.partial-{os.getpid()}-", suffix="".join(path.suffixes)
        )
    except OSError as e:
        raise OutputWriteError(DataError(path, f"cannot write the file ({e.strerror}).")) from e
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputWriteError(DataError(path, f"cannot write the file ({e.strerror}).")) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_leftovers(folder: str | os.PathLike, checkpoints: bool = False) -> list[Path]:
    """
    Remove the temporary files that interrupted runs left in ``folder``: those of :func:`atomic_path` whose process
    is gone and, with ``checkpoints``, Ignite's (``tmpXXXXXXXX``, whose writer cannot be told: a checkpoint folder
    belongs to one run at a time).

    Args:
        folder: an output folder of the run.
        checkpoints: whether ``folder`` holds checkpoints saved by Ignite.

    Returns:
        the files removed, each also logged.
    """
    removed = []
    for entry in Path(folder).iterdir() if Path(folder).is_dir() else []:
        partial = _PARTIAL_FILE.match(entry.name)
        stale = partial is not None and not _process_alive(int(partial["pid"]))
        stale = stale or (checkpoints and _IGNITE_TEMPORARY_FILE.match(entry.name) is not None)
        if stale and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
            logging.getLogger(__name__).warning(f"removed {entry}: a partial file left by an interrupted run")
    return removed


def check_output_dirs(*folders: str | os.PathLike, checkpoints: Sequence[str | os.PathLike] = ()) -> None:
    """
    Create the output folders and check that they are writable, so that a run fails at once with a clear message
    instead of after its first epoch; remove what interrupted runs left in them (:func:`remove_leftovers`).

    Args:
        folders: folders the run writes to.
        checkpoints: folders the run saves checkpoints to with Ignite; a warning says when one holds the shipped
            weights, which the run's model would replace.
    """
    for folder in [*folders, *checkpoints]:
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(folder, f"cannot create the output folder ({e.strerror}).") from e
        try:  # a real write: permission bits alone do not tell (root, read-only mounts, ACLs)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise DataError(folder, f"the output folder is not writable ({e.strerror}).") from e
        remove_leftovers(folder, checkpoints=str(folder) in map(str, checkpoints))
    for folder in checkpoints:
        _warn_if_shipped_weights(Path(folder) / "model.pt")


def _warn_if_shipped_weights(path: Path) -> None:
    """Warn that a run saving into ``path``'s folder will replace the shipped weights there (training's default)."""
    from .postprocessing import is_shipped_weights  # postprocessing imports this module

    if is_shipped_weights(path):
        logging.getLogger(__name__).warning(
            f"{path} holds the shipped LGG weights: this run's best model will replace them (in a clone, "
            "`git checkout models/model.pt` restores them); pass --ckpt_dir <folder> to keep them."
        )


def write_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> None:
    """
    Write ``array`` as a NIfTI file atomically: a reader sees either the previous file or the complete new one.

    Args:
        array: voxel data, spatial dimensions first (channels, if any, last as NIfTI stores them).
        affine: 4x4 voxel-to-world (RAS) matrix.
        path: destination, ``.nii`` or ``.nii.gz``.
    """
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


def atomic_write_json(data: object, path: str | os.PathLike) -> None:
    """Write ``data`` as JSON (indented 4 spaces) atomically to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=4) + "\n")


class AtomicNibabelWriter(NibabelWriter):
    """
    MONAI's ``NibabelWriter`` writing through :func:`atomic_path`, for ``SaveImaged(writer=...)``: an interrupted
    inference leaves no truncated segmentation under its final name.
    """

    def set_metadata(self, meta_dict: Mapping | None = None, resample: bool = True, **options) -> None:
        """
        MONAI's ``set_metadata``, keeping single-slice volumes 3D: ``SaveImage`` squeezes trailing singleton
        dimensions, which would turn a ``rows x cols x 1`` segmentation into a 2D image.

        Args:
            meta_dict: metadata of the image (``affine``, ``spatial_shape``...).
            resample: resample to the original affine.
            options: passed to ``NibabelWriter.set_metadata``.
        """
        super().set_metadata(meta_dict, resample=resample, **options)
        spatial_shape = tuple(int(s) for s in (meta_dict or {}).get("spatial_shape", ()))
        data = self.data_obj
        if len(spatial_shape) > data.ndim and data.shape == spatial_shape[: data.ndim]:
            self.data_obj = data.reshape(spatial_shape)

    @classmethod
    def resample_if_needed(cls, data_array, affine=None, target_affine=None, output_spatial_shape=None, **kwargs):
        """
        MONAI's ``resample_if_needed``, returning the data unchanged when there is nothing to resample (MONAI's
        resampler fails on the 2D array of a squeezed single-slice volume).
        """
        if target_affine is None and output_spatial_shape is None:
            return data_array, affine
        return super().resample_if_needed(data_array, affine, target_affine, output_spatial_shape, **kwargs)

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs) -> None:
        """
        Args:
            filename: destination file.
            verbose: log the file once it is complete under its final name (``SaveImaged(print_log=True)``).
            obj_kwargs: passed to ``NibabelWriter.write``.
        """
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=False, **obj_kwargs)
        if verbose:
            logging.getLogger(__name__).info(f"wrote {filename}")


def split_patients(
    patients: Sequence[str],
    num_folds: int = 5,
    test_fraction: float = 0.2,
    seed: int = 0,
    group_of: Callable[[str], str] | None = None,
) -> tuple[dict[str, int], list[str]]:
    """
    Patient-level split: a held-out test set, and the remaining patients assigned to cross-validation folds.

    The split depends only on the set of patient names and the arguments, not on their order, so re-running on the
    same data gives the same split.

    Args:
        patients: patient identifiers.
        num_folds: number of cross-validation folds.
        test_fraction: fraction of patients held out for testing (rounded to the nearest patient).
        seed: seed of the shuffle.
        group_of: the patient a name belongs to, when one patient can have several names (two studies of one
            patient); a patient's names then share a fold, or the test set. None: each name is a patient.

    Returns:
        ``(fold_of_patient, test_patients)``.
    """
    if len(set(patients)) != len(patients):
        raise ValueError("patient identifiers must be unique.")
    if group_of is not None:
        group = {name: group_of(name) for name in patients}
        group_folds, group_test = split_patients(sorted(set(group.values())), num_folds, test_fraction, seed)
        folds = {name: group_folds[group[name]] for name in patients if group[name] in group_folds}
        return folds, sorted(name for name in patients if group[name] in group_test)
    if num_folds < 1 or not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"need num_folds >= 1 and 0 <= test_fraction < 1, got {num_folds} and {test_fraction}.")
    shuffled = sorted(patients)
    random.Random(seed).shuffle(shuffled)
    num_test = int(round(test_fraction * len(shuffled)))
    if len(shuffled) - num_test < num_folds:
        raise ValueError(f"{len(shuffled)} patients are too few for {num_folds} folds and {num_test} test patients.")
    test = sorted(shuffled[:num_test])
    folds = {patient: i % num_folds for i, patient in enumerate(shuffled[num_test:])}
    return folds, test


def load_split(datalist: str | os.PathLike, subset: str, fold: int | str = 0, allow_empty: bool = True) -> list[dict]:
    """
    Read one subset of a datalist written by ``scripts/prepare_lgg.py``, ``scripts/prepare_decathlon.py`` or
    ``scripts/make_demo_data.py`` (or by hand in their format), checked by :func:`read_datalist`.

    Paths in the datalist are relative to the datalist's folder and are returned absolute.

    Args:
        datalist: path of ``datalist.json``.
        subset: ``"train"`` (every fold but ``fold``), ``"validation"`` (fold ``fold``), ``"test"`` (held-out
            patients) or ``"all"`` (training and test patients).
        fold: the cross-validation fold used for validation; ``"all"`` trains on every fold and leaves the
            validation subset empty (the run's result is then its final model, as for a fixed schedule).
        allow_empty: return that empty validation subset; False (evaluation) refuses it.
    """
    if subset not in ("train", "validation", "test", "all"):
        raise DataError("--eval_subset", f"must be 'train', 'validation', 'test' or 'all', got {subset!r}.")
    datalist = Path(datalist)
    training, testing = read_datalist(datalist)
    if subset in ("train", "validation") and not training:
        raise DataError(datalist, f"the '{subset}' subset is empty: the datalist lists no training cases.")
    folds = sorted({item["fold"] for item in training})
    if subset == "validation" and fold == "all" and not allow_empty:
        raise DataError("--eval_subset", "the validation subset is empty with --fold all; choose another subset.")
    if subset in ("train", "validation") and fold != "all" and fold not in folds:
        raise DataError("--fold", f"fold {fold!r} is not in the datalist {datalist} (folds: {folds}, or 'all').")
    base_dir = datalist.parent.absolute()
    training = load_decathlon_datalist(datalist, data_list_key="training", base_dir=base_dir) if training else []
    testing = load_decathlon_datalist(datalist, data_list_key="testing", base_dir=base_dir) if testing else []
    if subset == "train":
        items = [item for item in training if item["fold"] != fold]
    elif subset == "validation":
        items = [item for item in training if item["fold"] == fold]
    elif subset == "test":
        items = testing
    else:
        items = training + testing
    if not items and not (subset == "validation" and fold == "all"):
        raise DataError(datalist, f"the '{subset}' subset (fold {fold}) is empty.")
    return items


def read_datalist(datalist: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """
    Read and check a datalist: ``{"training": [{"image": ..., "label": ..., "fold": 0}, ...], "testing": [...]}``,
    the image a path or a list of paths (one file per channel), paths relative to the datalist's folder.

    Args:
        datalist: path of ``datalist.json``.

    Returns:
        ``(training, testing)``, the entries as written.

    Raises:
        DataError: naming the datalist and the entry when the file is not such a datalist, when an entry lacks its
            image, label or integer fold, or when a case is listed twice (a test patient in a training fold, say).
    """
    datalist = Path(datalist)
    if datalist.exists() and not datalist.is_file():
        raise DataError(datalist, "not a regular file (a datalist must be a JSON file).")
    if not datalist.is_file():
        raise DataError(
            datalist,
            "datalist not found; run scripts/prepare_lgg.py, scripts/prepare_decathlon.py or scripts/make_demo_data.py "
            "first.",
        )
    try:
        content = json.loads(datalist.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(datalist, f"not a valid datalist (not JSON: {e}).") from e
    if not isinstance(content, dict) or "training" not in content:
        raise DataError(datalist, 'not a valid datalist: expected a JSON object with a "training" list.')
    subsets = {"training": content["training"], "testing": content.get("testing", [])}
    for subset, items in subsets.items():
        if not isinstance(items, list):
            raise DataError(datalist, f'"{subset}" must be a list of cases, got {type(items).__name__}.')
        for index, item in enumerate(items):
            problem = _entry_problem(item, needs_label_and_fold=subset == "training")
            if problem:
                raise DataError(datalist, f'"{subset}" entry {index} {problem}: {json.dumps(item)[:200]}')
    entries = [
        (f'"{subset}" entry {index}', item) for subset, items in subsets.items() for index, item in enumerate(items)
    ]
    # a case is named after its image file, or after its folder when each case has a folder of its own holding files
    # of the same names (BraTS 2015)
    folders = [Path(_first_image(item)).parent for _, item in entries]
    stems = [nifti_stem(Path(_first_image(item)).name) for _, item in entries]
    same_file_name = len({Path(_first_image(item)).name for _, item in entries}) == 1
    folder_per_case = len(entries) > 1 and same_file_name and len(set(folders)) == len(entries)
    seen: dict[str, str] = {}  # case name and resolved file -> the entry that listed it
    for (where, item), folder, stem in zip(entries, folders, stems):
        for key in ("image", "label"):
            for path in item[key] if isinstance(item.get(key), list) else [item.get(key)]:
                target = str((datalist.parent / path).resolve()) if path is not None else None
                if target in seen:
                    raise DataError(
                        datalist,
                        f"{path} is listed twice ({seen[target]} and {where}), under this name or through a "
                        "symbolic link: a case must appear once, in one training fold or in testing.",
                    )
                if target is not None:
                    seen[target] = where
        name = "case " + repr(folder.name if folder_per_case else stem)
        if name in seen:
            raise DataError(
                datalist,
                f"{name} is listed twice ({seen[name]} and {where}): a case must appear once, in one training fold "
                "or in testing.",
            )
        seen[name] = where
    return subsets["training"], subsets["testing"]


def _first_image(item: Mapping) -> str:
    """The image path of a datalist entry, the first channel file's when it lists one file per channel."""
    return item["image"][0] if isinstance(item["image"], list) else item["image"]


def _entry_problem(item: object, needs_label_and_fold: bool) -> str | None:
    """What is wrong with a datalist entry, or None."""
    if not isinstance(item, dict):
        return "is not an object"
    image = item.get("image")
    images = image if isinstance(image, list) else [image]
    if not images or not all(isinstance(path, str) and path for path in images):
        return 'has no "image" (a file path, or a list of one file per channel)'
    label = item.get("label")
    if (needs_label_and_fold or "label" in item) and not (isinstance(label, str) and label):
        return 'has no "label" file path'
    fold = item.get("fold")
    if needs_label_and_fold and not (isinstance(fold, int) and not isinstance(fold, bool) and fold >= 0):
        return 'needs an integer "fold" (0, 1, ...)'
    return None


def nifti_stem(name: str) -> str:
    """A NIfTI file name without its ``.nii.gz`` or ``.nii`` extension."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def case_name(channel_file: str | os.PathLike, suffix: str) -> str:
    """
    The name of the case that a channel file ``<case><suffix>.nii.gz`` belongs to.

    Args:
        channel_file: path or name of the file.
        suffix: the file-name ending of its channel; a name not ending in it is returned without its extension only.
    """
    stem = nifti_stem(Path(channel_file).name)
    return stem[: -len(suffix)] if suffix and stem.endswith(suffix) else stem


def find_volumes(folder: str | os.PathLike, channel_suffixes: Sequence[str] | None = None) -> list[dict]:
    """
    List the cases of a folder of NIfTI files (``*.nii.gz``, ``*.nii``; hidden files are left out), sorted by name.

    Without ``channel_suffixes`` every file is one case holding all its channels: ``[{"image": path}, ...]``. With
    them, each case is stored as one file per channel, named ``<case><suffix>.nii.gz`` (nnU-Net's layout is
    ``["_0000", "_0001", "_0002"]``), and listed as ``[{"image": [path of the first suffix, ...]}, ...]``, which
    MONAI's ``LoadImage`` stacks into channels in that order.

    Args:
        folder: folder to search (not recursive).
        channel_suffixes: the file-name endings of a case's channel files, in channel order; None for one file per
            case.

    Paths are listed as found, symbolic links unresolved, so that outputs are named after the names in ``folder``.

    Raises:
        DataError: naming the folder when it holds no NIfTI file; naming a NIfTI-named entry that is not a readable
            regular file (a dangling link, a folder, a FIFO); naming two files that would give one output name
            (``case.nii.gz`` and ``case.nii``); with ``channel_suffixes``, naming a file that ends in none of them or
            a channel file that a case lacks.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "not a folder." if folder.exists() else "input folder does not exist.")
    entries = sorted(p.absolute() for p in folder.iterdir() if not p.name.startswith("."))
    for path in entries:
        if path.name.lower().endswith(NIFTI_SUFFIXES) and not path.name.endswith(NIFTI_SUFFIXES):
            raise DataError(path, "a NIfTI extension in capitals: rename it to .nii.gz or .nii (lower case).")
    volumes = [p for p in entries if p.name.endswith(NIFTI_SUFFIXES)]
    others = [p.name for p in entries if p not in volumes]
    if others:
        logging.getLogger(__name__).warning(
            f"{folder}: {len(others)} entries that are not NIfTI volumes left out: {', '.join(others[:10])}"
            + (", ..." if len(others) > 10 else "")
        )
    for path in volumes:
        if path.is_symlink() and not path.exists():
            raise DataError(path, "a symbolic link whose target does not exist.")
        if not path.is_file():
            raise DataError(path, "not a regular file.")
    if not volumes:
        raise DataError(folder, "no NIfTI volumes (*.nii.gz, *.nii) in this folder.")
    if channel_suffixes is None:
        by_case: dict[str, Path] = {}
        for path in volumes:
            other = by_case.setdefault(nifti_stem(path.name), path)
            if other != path:
                raise DataError(path, f"same case name as {other.name}: both would be written as one output.")
        return [{"image": str(p)} for p in volumes]
    return [{"image": [str(p) for p in files]} for files in group_channel_files(volumes, channel_suffixes)]


def channel_suffix_list(channel_suffixes: Sequence[str]) -> list[str]:
    """Check that ``channel_suffixes`` is a list of distinct, non-empty file-name endings and return it."""
    if isinstance(channel_suffixes, str) or not all(isinstance(s, str) and s for s in channel_suffixes):
        raise DataError(
            "--channel_suffixes",
            f"must be a list of file-name endings in channel order, such as ['_0000','_0001','_0002'], "
            f"got {channel_suffixes!r}.",
        )
    suffixes = list(channel_suffixes)
    if not suffixes or len(set(suffixes)) != len(suffixes):
        raise DataError("--channel_suffixes", f"must be distinct and at least one, got {suffixes}.")
    return suffixes


def group_channel_files(files: Sequence[Path], channel_suffixes: Sequence[str]) -> list[list[Path]]:
    """
    Group the NIfTI files of a folder by case: ``<case><suffix>.nii.gz`` for each of ``channel_suffixes``.

    Args:
        files: the files, all in one folder.
        channel_suffixes: the file-name endings of a case's channel files, in channel order.

    Returns:
        for each case, sorted by case name, its files in the order of ``channel_suffixes``.
    """
    suffixes = channel_suffix_list(channel_suffixes)
    cases: dict[str, dict[str, Path]] = {}
    for path in files:
        stem = nifti_stem(path.name)
        matching = [suffix for suffix in suffixes if stem.endswith(suffix) and len(stem) > len(suffix)]
        if not matching and stem in suffixes:
            raise DataError(
                path, f"the file name is the channel suffix {stem!r} alone: the case name before it is empty."
            )
        if not matching:
            raise DataError(
                path, f"the file name ends in none of the channel suffixes {suffixes} (expected <case><suffix>.nii.gz)."
            )
        suffix = max(matching, key=len)  # the longest, when one suffix ends another ("c" and "_t1c")
        channels = cases.setdefault(case_name(path, suffix), {})
        if suffix in channels:
            raise DataError(path, f"a second file for the same channel as {channels[suffix].name}.")
        channels[suffix] = path
    grouped = []
    for case in sorted(cases, key=natural_key):
        missing = [suffix for suffix in suffixes if suffix not in cases[case]]
        if missing:
            folder = files[0].parent
            raise DataError(
                folder / f"{case}{missing[0]}.nii.gz",
                f"channel file not found: case {case!r} has no file for the channel(s) {missing}.",
            )
        grouped.append([cases[case][suffix] for suffix in suffixes])
    return grouped


def check_output_names(
    cases: Sequence[Mapping],
    output_dir: str | os.PathLike,
    postfixes: Sequence[str] = ("seg",),
    channel_suffixes: Sequence[str] | None = None,
) -> None:
    """
    Refuse, before anything is written, an inference whose outputs (``<case>_<postfix>.nii.gz`` in ``output_dir``, as
    :class:`CaseNameFormatter` names them) would land in an input folder, replace an input file (through a symbolic
    link) or each other.

    Args:
        cases: the cases, as listed by :func:`find_volumes`.
        output_dir: the folder outputs are written to.
        postfixes: the outputs' postfixes (``"seg"``, ``"prob"``).
        channel_suffixes: the channel suffixes given to :func:`find_volumes`, if any.
    """
    files = [
        Path(path) for case in cases for path in ([case["image"]] if isinstance(case["image"], str) else case["image"])
    ]
    inputs = {path.resolve(): path for path in files}
    if Path(output_dir).resolve() in {path.parent.resolve() for path in files}:
        raise DataError(
            "--output_dir",
            f"{output_dir} is the input folder: a later run on it would read the outputs as images; choose another.",
        )
    outputs: dict[Path, Path] = {}
    for case in cases:
        first = Path(case["image"] if isinstance(case["image"], str) else case["image"][0])
        name = case_name(first, channel_suffixes[0]) if channel_suffixes else nifti_stem(first.name)
        for postfix in postfixes:
            output = (Path(output_dir) / f"{name}_{postfix}.nii.gz").resolve()
            if output in inputs:
                raise DataError(
                    inputs[output],
                    f"an output of this run ({output.name}) would replace this input file; choose "
                    "another --output_dir.",
                )
            if output in outputs:
                raise DataError(first, f"same output name as {outputs[output]}: {output}.")
            if output.exists() and not output.is_file():
                raise DataError(output, "an output of this run, but not a regular file (a folder?); move it away.")
            outputs[output] = first


class CaseNameFormatter:
    """
    ``output_name_formatter`` for MONAI's ``SaveImage``: names the output of a case read from one file per channel
    after the case (``<case>_seg.nii.gz``) instead of after its first channel file (``<case>_0000_seg.nii.gz``).

    Args:
        channel_suffixes: the file-name endings of a case's channel files, as given to :func:`find_volumes`; None
            (one file per case) keeps MONAI's default naming.
    """

    def __init__(self, channel_suffixes: Sequence[str] | None = None) -> None:
        self.channel_suffixes = None if channel_suffixes is None else channel_suffix_list(channel_suffixes)

    def __call__(self, metadict: dict, saver: object) -> dict:
        kwargs = default_name_formatter(metadict, saver)
        if self.channel_suffixes:
            path = Path(kwargs["subject"])
            extension = path.name[len(nifti_stem(path.name)) :]
            kwargs["subject"] = str(path.with_name(case_name(path, self.channel_suffixes[0]) + extension))
        return kwargs


def pad_collate(batch: Sequence) -> object:
    """
    ``collate_fn`` for a training ``DataLoader`` whose items are lists of samples (``RandCropByPosNegLabeld``'s
    ``num_samples``): flatten them and pad every sample to the largest spatial size of the batch with MONAI's
    ``pad_list_data_collate``, so that volumes of different sizes can share a batch.

    Args:
        batch: the dataset items of one batch, each a sample or a list of samples.
    """
    samples = [sample for item in batch for sample in (item if isinstance(item, list) else [item])]
    return pad_list_data_collate(samples)


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically (``x_2`` before ``x_10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
