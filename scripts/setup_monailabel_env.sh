#!/usr/bin/env bash
# Create (or reuse) .venv-monailabel: MONAI Label 0.8.5 from PyPI for tests/test_monailabel.py and for serving the
# bundle to 3D Slicer or OHIF. MONAI Label needs torchvision and numpy < 2; its DICOM-SEG dependency (pydicom-seg
# 0.4.1) fails to import under pydicom 3, which 0.8.5 allows, so pydicom and its companions are pinned.
# torch: on a machine without a working NVIDIA GPU (nvidia-smi), the CPU build of the pinned torch and torchvision from
# PyTorch's CPU wheel index, which leaves out PyPI's CUDA libraries (several GB); where that index cannot be reached,
# PyPI's build of the same pins. The last line says which build is installed.
# Usage: bash scripts/setup_monailabel_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-monailabel
torch_version=2.14.1
torchvision_version=0.29.1 # the torchvision release built against torch 2.14.1
cpu_index=https://download.pytorch.org/whl/cpu

report() {
    "$venv/bin/python" -c "
import monailabel, torch, torchvision
build = f'CUDA {torch.version.cuda}' if torch.version.cuda else 'CPU-only'
print(f'MONAI Label {monailabel.__version__}, torch {torch.__version__} ({build} build), '
      f'torchvision {torchvision.__version__}')"
}

if [ -x "$venv/bin/monailabel" ] && "$venv/bin/python" -c "import monailabel, torchvision" 2>/dev/null; then
    report
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
if nvidia-smi -L >/dev/null 2>&1; then
    echo "NVIDIA GPU found: torch $torch_version from PyPI, with its CUDA libraries"
elif "$venv/bin/python" -c "import sys, torch; sys.exit(torch.__version__ != '$torch_version+cpu')" 2>/dev/null; then
    echo "no NVIDIA GPU: keeping the CPU build of torch $torch_version already in $venv"
elif "$venv/bin/python" -m pip install --quiet --timeout 20 --retries 0 --index-url "$cpu_index" \
    "torch==$torch_version+cpu" "torchvision==$torchvision_version+cpu" >/dev/null 2>&1; then
    echo "no NVIDIA GPU: installed torch's CPU build from $cpu_index"
else
    echo "no NVIDIA GPU, but $cpu_index is out of reach or lacks torch $torch_version+cpu:" \
        "falling back to PyPI's build, with its CUDA libraries (several GB more)"
fi
# torch==X accepts an installed X+cpu, so a CPU build stays
"$venv/bin/python" -m pip install --quiet "torch==$torch_version" "torchvision==$torchvision_version" \
    "monailabel==0.8.5" "numpy<2" "pydicom==2.4.4" "dicomweb-client==0.59.1" "pynetdicom==2.0.2"
# MONAI Label puts the bundle folder on sys.path itself; its dependencies (MONAI, Ignite, nibabel, tifffile, fire,
# TensorBoard) come with MONAI Label
report
