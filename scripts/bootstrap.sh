#!/usr/bin/env bash
# Make .venv ready to run everything: Debian packages, pip packages, ROS 2 Jazzy wheels, the
# mmfusion_msgs interface build and a normal (non-editable) install of mmfusion_ros.
# Idempotent: each step is skipped when its inputs have not changed since it last ran.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
STAMPS=$VENV/.stamps
log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }

# 1. Debian packages: libusb for open3d, PortAudio for the microphone node.
need_apt=()
for p in libusb-1.0-0 libportaudio2; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# 2. The virtual environment and pip packages.
[ -x "$VENV/bin/python" ] || { log "creating .venv"; python3 -m venv "$VENV"; }
mkdir -p "$STAMPS"
# one bootstrap at a time (parallel `make` calls share the venv)
exec 9>"$VENV/.bootstrap.lock"
flock 9
PY=$VENV/bin/python
req_hash=$(cat requirements.txt requirements-ros.txt requirements-dev.txt | sha1sum | cut -c1-16)
if [ "$(cat "$STAMPS/pip" 2>/dev/null)" != "$req_hash" ]; then
  log "pip install (first time: about 2 minutes)"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -r requirements.txt -r requirements-ros.txt -r requirements-dev.txt
  echo "$req_hash" > "$STAMPS/pip"
fi

export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV

# 3. mmfusion_msgs with plain CMake into the venv (the wheels' CMake files name the build machine's paths).
msgs_hash=$( (find mmfusion_msgs -type f -print0 | sort -z | xargs -0 sha1sum; echo "$req_hash") | sha1sum | cut -c1-16)
if [ "$(cat "$STAMPS/msgs" 2>/dev/null)" != "$msgs_hash" ] || ! "$PY" -c "import mmfusion_msgs.msg" 2>/dev/null; then
  log "building mmfusion_msgs"
  PYINC=$("$PY" -c "import sysconfig;print(sysconfig.get_paths()['include'])")
  NPINC=$("$PY" -c "import numpy;print(numpy.get_include())")
  grep -rl /opt/python/cp311-cp311 "$VENV/share" --include='*.cmake' 2>/dev/null | xargs -r sed -i \
    -e "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g" \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NPINC#g" || true
  rm -rf build/mmfusion_msgs; mkdir -p build
  "$VENV/bin/cmake" -S mmfusion_msgs -B build/mmfusion_msgs -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -Wno-dev >build/msgs-cmake.log 2>&1 \
    || { cat build/msgs-cmake.log; exit 1; }
  "$VENV/bin/cmake" --build build/mmfusion_msgs -j2 >>build/msgs-cmake.log 2>&1 || { tail -50 build/msgs-cmake.log; exit 1; }
  "$VENV/bin/cmake" --install build/mmfusion_msgs >>build/msgs-cmake.log 2>&1 || { tail -50 build/msgs-cmake.log; exit 1; }
  # rosidl installs the Python package under lib/python3.11/site-packages of the prefix: same venv.
  "$PY" -c "import mmfusion_msgs.msg" || { echo "mmfusion_msgs built but does not import"; exit 1; }
  echo "$msgs_hash" > "$STAMPS/msgs"
fi

# 3b. Test-only stand-ins of interface packages a robot installs from its distribution but that have no
# wheel (test_interfaces/: audio_common_msgs, tf2_msgs, vision_msgs), so the tests can run the node with
# them. mmfusion_ros does not depend on them. Same CMake recipe, cached by a hash of their files.
ti_hash=$( (find test_interfaces -type f -print0 | sort -z | xargs -0 sha1sum; echo "$req_hash") | sha1sum | cut -c1-16)
if [ "$(cat "$STAMPS/test_interfaces" 2>/dev/null)" != "$ti_hash" ] \
   || ! "$PY" -c "import audio_common_msgs.msg, tf2_msgs.msg, vision_msgs.msg" 2>/dev/null; then
  for pkg in tf2_msgs audio_common_msgs vision_msgs; do
    log "building test interface $pkg"
    rm -rf "build/ti_$pkg"
    "$VENV/bin/cmake" -S "test_interfaces/$pkg" -B "build/ti_$pkg" -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -Wno-dev >"build/ti_$pkg.log" 2>&1 \
      || { cat "build/ti_$pkg.log"; exit 1; }
    "$VENV/bin/cmake" --build "build/ti_$pkg" -j2 >>"build/ti_$pkg.log" 2>&1 || { tail -50 "build/ti_$pkg.log"; exit 1; }
    "$VENV/bin/cmake" --install "build/ti_$pkg" >>"build/ti_$pkg.log" 2>&1 || { tail -50 "build/ti_$pkg.log"; exit 1; }
  done
  "$PY" -c "import audio_common_msgs.msg, tf2_msgs.msg, vision_msgs.msg" \
    || { echo "test interfaces built but do not import"; exit 1; }
  echo "$ti_hash" > "$STAMPS/test_interfaces"
fi

# 4. mmfusion_ros, non-editable so its share/ files (launch, config, models) are installed.
pkg_hash=$(find mmfusion_ros -type f -not -path '*/__pycache__/*' -not -path '*/build/*' -not -name '*.egg-info' -print0 \
  | sort -z | xargs -0 sha1sum | sha1sum | cut -c1-16)
if [ "$(cat "$STAMPS/pkg" 2>/dev/null)" != "$pkg_hash" ] || ! "$PY" -c "import mmfusion_ros" 2>/dev/null; then
  log "installing mmfusion_ros"
  rm -rf mmfusion_ros/build mmfusion_ros/*.egg-info
  "$PY" -m pip install -q --no-deps --no-build-isolation --force-reinstall ./mmfusion_ros
  rm -rf mmfusion_ros/build mmfusion_ros/*.egg-info
  echo "$pkg_hash" > "$STAMPS/pkg"
fi
# 5. The torch-free text encoder (all-MiniLM-L6-v2 as ONNX + tokenizer.json) in the user cache, once.
TE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/mmfusion_ros/text_encoder
if [ ! -f "$TE_DIR/text_encoder.onnx" ] || [ ! -f "$TE_DIR/tokenizer.json" ]; then
  log "exporting the text encoder to ONNX in $TE_DIR (once, about 10 s)"
  mkdir -p build
  "$PY" -m mmfusion_ros.cli export --text-encoder >build/text-encoder-export.log 2>&1 \
    || { tail -20 build/text-encoder-export.log; exit 1; }
fi
log "ready: . .venv/bin/activate && export AMENT_PREFIX_PATH=\$VIRTUAL_ENV"
