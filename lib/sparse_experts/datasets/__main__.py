"""Command line: ``python -m sparse_experts.datasets [--data-dir DIR] {list,prepare,info,grid} ...``."""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

from sparse_experts.datasets import grid, loader


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_experts.datasets", description=__doc__)
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir (default: <repo>/data/tfds)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the embedded datasets")
    p_prep = sub.add_parser("prepare", help="generate / download and prepare datasets")
    p_prep.add_argument("names", nargs="+")
    p_info = sub.add_parser("info", help="describe a dataset")
    p_info.add_argument("name")
    p_grid = sub.add_parser("grid", help="save an example image grid as PNG")
    p_grid.add_argument("name")
    p_grid.add_argument("--out", required=True)
    p_grid.add_argument("--split", default="train")
    p_grid.add_argument("--count", type=int, default=64)
    p_grid.add_argument("--cols", type=int, help="images per row (default 8, or K with --by-class)")
    p_grid.add_argument("--scale", type=int, default=2)
    p_grid.add_argument("--by-class", type=int, default=0, help="one row of this many examples per class")
    p_grid.add_argument("--labels", action="store_true", help="caption each image with its class name")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        if args.command == "list":
            for name in loader.DATASETS:
                i = loader.info(name)
                print(f"{name:24s} {i.group:12s} {i.num_classes:3d} classes  {i.splits}")
        elif args.command == "prepare":
            for name in args.names:
                start = time.perf_counter()
                path = loader.prepare(name, data_dir=args.data_dir)
                print(f"{name}: ready in {path} ({time.perf_counter() - start:.1f} s)")
        elif args.command == "info":
            i = loader.info(args.name, data_dir=args.data_dir)
            print(f"{i.name} ({i.source}, TFDS {i.tfds_name}): {i.description}")
            print(f"  group {i.group}; image {i.image_shape}; splits {i.splits}")
            if i.split_sources:
                print(f"  split plan (TFDS expressions): {i.split_sources}")
            print(f"  augmentations allowed: {i.augmentations}")
            print(f"  {i.num_classes} classes: {', '.join(i.class_names)}")
            if i.coarse_class_names is not None:
                print(f"  {i.num_coarse_classes} coarse classes:")
                for c, cname in enumerate(i.coarse_class_names):
                    fines = [i.class_names[f] for f in np.flatnonzero(i.fine_to_coarse == c)]
                    print(f"    {cname}: {', '.join(fines)}")
        elif args.command == "grid":
            data = loader.load_split(args.name, args.split, data_dir=args.data_dir)
            dinfo = loader.info(args.name, data_dir=args.data_dir)
            if args.by_class > 0:
                idx = grid.by_class(data.labels, dinfo.num_classes, args.by_class)
                cols = args.cols or args.by_class
            else:
                idx = np.arange(min(args.count, len(data)))
                cols = args.cols or 8
            path = grid.save_grid(
                data.images[idx],
                args.out,
                labels=data.labels[idx] if args.labels else None,
                class_names=dinfo.class_names if args.labels else None,
                cols=cols,
                scale=args.scale,
            )
            print(f"saved {path}")
    except (ValueError, loader.DatasetNotPreparedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
