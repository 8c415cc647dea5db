"""`mmfusion build-engine`: build (or refresh) the TensorRT engines of a model bundle ahead of time.

A first build takes minutes on a Jetson; doing it here, once, keeps the node's start fast. The node
then finds the engines in the same cache by the same key (runtime/engine_cache.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model bundle folder (with manifest.json and onnx/)")
    p.add_argument("--precision", choices=["fp16", "int8", "fp32"], default="fp16",
                   help="fp16 (default); int8 calibrates the encoders on --calibration-data")
    p.add_argument("--cache", default="", help="engine cache folder (absolute; default ~/.cache/mmfusion_ros/engines)")
    p.add_argument("--force", action="store_true", help="rebuild even when a matching engine is cached")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch the engines accept (default 8)")
    p.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT builder workspace (MiB)")
    p.add_argument("--calibration-data", default="", help="int8: dataset folder from `mmfusion sim dataset`")
    p.add_argument("--calibration-samples", type=int, default=256, help="int8: samples to calibrate on")
    p.add_argument("--parts", nargs="*", default=None, help="only these parts (default: all in the manifest)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from mmfusion_ros.runtime.manifest import ManifestError, load_manifest
    from mmfusion_ros.runtime.tensorrt_backend import (TrtOptions, ensure_engine, import_cudart, import_tensorrt,
                                                      gpu_info)

    try:
        manifest = load_manifest(args.model)
        opts = TrtOptions(precision=args.precision, engine_cache_dir=args.cache, force_engine_update=args.force,
                          max_batch=args.max_batch, workspace_mb=args.workspace_mb,
                          calibration_data=args.calibration_data, calibration_samples=args.calibration_samples)
        opts.validate()
    except (ManifestError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        trt = import_tensorrt()
        import_cudart()
        gpu = gpu_info(opts.device_id)
    except (ImportError, RuntimeError) as e:
        print(f"error: cannot build TensorRT engines here: {e}", file=sys.stderr)
        return 1
    parts = args.parts or list(manifest["parts"])
    unknown = [p for p in parts if p not in manifest["parts"]]
    if unknown:
        print(f"error: unknown parts {unknown}; the bundle has {list(manifest['parts'])}", file=sys.stderr)
        return 2
    print(f"TensorRT {trt.__version__} on {gpu[0]} (sm{gpu[1][0]}{gpu[1][1]}), precision {opts.precision}")
    for part in parts:
        t0 = time.perf_counter()
        try:
            path, built = ensure_engine(manifest, part, opts)
        except Exception as e:  # parser/builder errors carry TensorRT's own message
            print(f"error: {part}: {e}", file=sys.stderr)
            return 1
        what = f"built in {time.perf_counter() - t0:.1f} s" if built else "cached"
        print(f"  {part:16s} {what:20s} {path}")
    return 0
