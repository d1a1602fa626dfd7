#!/usr/bin/env bash
# Create (or reuse) .venv-monailabel: MONAI Label 0.8.5 from PyPI for tests/test_monailabel.py and for serving the
# bundle to 3D Slicer or OHIF. MONAI Label needs torchvision and numpy < 2; its DICOM-SEG dependency (pydicom-seg
# 0.4.1) fails to import under pydicom 3, which 0.8.5 allows, so pydicom and its companions are pinned.
# Usage: bash scripts/setup_monailabel_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-monailabel
if [ -x "$venv/bin/monailabel" ] && "$venv/bin/python" -c "import monailabel, torchvision" 2>/dev/null; then
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" "monailabel==0.8.5" "numpy<2" \
    "pydicom==2.4.4" "dicomweb-client==0.59.1" "pynetdicom==2.0.2"
# MONAI Label puts the bundle folder on sys.path itself; its dependencies (MONAI, Ignite, nibabel, tifffile, fire,
# TensorBoard) come with MONAI Label
"$venv/bin/python" -c "import monailabel, torchvision; print('MONAI Label', monailabel.__version__)"
