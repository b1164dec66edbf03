"""Write the image networks inside a temporal genotype as genotype files of their own, to retrain them on video
frames (`python -m nas.retrain key.json data=synthetic_video`): the key network (whose best.pt is then the
temporal retrain's `key_checkpoint=`) and each light frame's network (the "light network without fusion"
reference, run on every frame).

    python -m nas.tools.temporal_parts runs/search/<run>/genotype.json --out runs/parts
    -> runs/parts/key.json, runs/parts/light0.json, ... (one per light frame)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nas.errors import UserError
from nas.genotype import Genotype, GenotypeError, load, save
from nas.spaces import resolve


def parts(genotype: Genotype) -> dict[str, Genotype]:
    """{"key": the key network's genotype, "light<i>": light frame i's network as a genotype of the light
    space} with the temporal genotype's input and heatmap sizes."""
    if genotype.space != "temporal":
        raise UserError(f"{genotype.space} genotypes hold one network; give a temporal genotype")
    resolve(genotype).validate(genotype)
    out = {"key": Genotype.from_dict(genotype.genotype["key"])}
    args = genotype.space_args
    light_args = {**args.get("light_space_args", {}), "num_keypoints": args.get("num_keypoints", 17)}
    for i, frame in enumerate(genotype.genotype["frames"]):
        out[f"light{i}"] = Genotype(space=args.get("light_space", "vipnas_mbv3"), space_args=dict(light_args),
                                    genotype=frame["light"], input_size=genotype.input_size,
                                    heatmap_size=genotype.heatmap_size,
                                    provenance={"from": "temporal genotype", "light_frame": i})
    for name, part in out.items():
        resolve(part).validate(part)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("genotype", help="a temporal genotype file (search_space=temporal)")
    parser.add_argument("--out", required=True, help="folder to write key.json, light0.json, ... into")
    parser.add_argument("--overwrite", action="store_true", help="replace files that are already there")
    args = parser.parse_args(argv)
    try:
        written = parts(load(args.genotype))
        out = Path(args.out)
        taken = [str(out / f"{n}.json") for n in written if (out / f"{n}.json").exists()]
        if taken and not args.overwrite:
            raise UserError(f"{taken[0]} exists; pass --overwrite to replace it, or another --out")
        out.mkdir(parents=True, exist_ok=True)
        for name, part in written.items():
            save(part, out / f"{name}.json")
            print(f"{out / f'{name}.json'}  ({part.space})")
    except (UserError, GenotypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
