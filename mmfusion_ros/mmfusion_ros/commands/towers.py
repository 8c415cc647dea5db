"""`mmfusion towers import --open-clip ARCH --pretrained TAG_OR_FILE --out BUNDLE`: a pretrained OpenCLIP
image-text model as a bundle's frozen camera encoder and text side (train/towers.py writes it).

`--pretrained` is an open_clip tag (open_clip fetches the weights: this one command may use the network,
because the user names them) or a local checkpoint file (offline). The bundle runs at once as a camera
model; `mmfusion train --towers BUNDLE` binds LiDAR, audio and IMU to it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["import"],
                   help="import: export an OpenCLIP model's image and text towers into a new bundle")
    imp = p
    imp.add_argument("--open-clip", dest="arch", required=True, metavar="ARCH",
                     help="open_clip architecture name, e.g. ViT-B-32 (open_clip.list_models())")
    imp.add_argument("--pretrained", required=True,
                     help="open_clip pretrained tag (fetched by open_clip; needs internet), a local checkpoint "
                          "file, or 'random' (random weights: tests and benchmarks only)")
    imp.add_argument("--out", required=True, help="bundle folder to write (must not exist or be empty)")
    imp.add_argument("--config", type=Path, default=None,
                     help="open_clip model-config JSON named ARCH.json, for an architecture open_clip does not ship")
    imp.add_argument("--name", default=None, help="bundle name (default openclip_<arch>)")
    imp.add_argument("--prompt-template", default="a photo of {}.",
                     help="how the default prompts are phrased for the text tower ({} = 'a dog')")
    imp.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    imp.add_argument("--threads", type=int, default=0, help="torch CPU threads for the export (0 = torch's default)")


def run(args) -> int:
    import torch

    from mmfusion_ros.model.open_clip_towers import TowerImportError
    from mmfusion_ros.train.towers import import_towers

    if args.threads:
        torch.set_num_threads(args.threads)
    if "{}" not in args.prompt_template:
        print(f"error: --prompt-template {args.prompt_template!r} needs a {{}} for the object", file=sys.stderr)
        return 2
    pretrained = None if args.pretrained == "random" else args.pretrained
    try:
        man = import_towers(args.arch, pretrained, args.out, name=args.name, config=args.config,
                            prompt_template=args.prompt_template, force=args.force)
    except (TowerImportError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    src = man["towers"]["source"]
    print(f"wrote {args.out}: {src['arch']} ({src['pretrained']}), embed_dim {man['embed_dim']}, image "
          f"{man['preprocess']['image_size']} px ({man['preprocess']['image_resize']}), logit scale "
          f"{man['logit_scale']:.1f}; camera only until `mmfusion train --towers {args.out}` binds the other sensors")
    return 0
