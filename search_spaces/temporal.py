"""ViPNAS's temporal level (Xu et al., CVPR 2021) as a search space: a key network and light networks that
fuse the heatmaps propagated from the previous frame.

Video runs online, frame by frame, in cycles of 1 + T frames: frame 0 of a cycle is a key frame and runs the
key network (any image genotype of the project, e.g. a searched darts_cells or S-ViPNAS network); frames
1..T each run their own light network, a member of a ViPNAS space (`light_space`), which takes the previous
frame's heatmaps, warped from the previous frame's crop into this frame's crop, and fuses them into one of
its feature maps. Per following frame the genotype names the light network, the fusion stage and the
fusion op. ViPNAS's paper fixes none of the details below; these are our choices, all configurable:

- Fusion stage s: 0 = the stem's output, i = the output of the light network's stage i (the ViPNAS spaces'
  F1..F4 are their stages); the heatmaps are resized (bilinear) to that map's size.
- Fusion op, with P a 1x1 conv from the K heatmaps to the map's C channels: `add` x + P(h); `mul`
  x * (1 + P(h)); `cat` Q([x, h]) with Q a 1x1 conv from C + K to C. P starts at zero and Q as the
  identity on x, so a fused light network starts as the same network without fusion and learns to use the
  heatmaps.
- The propagated heatmaps are detached (the previous frame's network is not trained through this one), and
  the key frame of a clip sees no heatmaps.
- Cycle length T from `cycle_choices`; the key network is fixed by the space (`key`: a genotype file or an
  inline genotype dict), the search picks T and each frame's light network and fusion.

One-shot supernet (`supernet()`, for the search): the key network, ONE elastic light network (the light
space's supernet) shared by every light frame, and a fusion module per (stage, op) choice whose first c rows
serve a member of width c; `set_path(genotype)` picks the cycle and each light frame's member, stage and op,
and `build(genotype, supernet)` gives the standalone network with the same outputs (tested).

Genotype (readable): {"key": {<the key network's whole genotype: space, space_args, genotype>},
"cycle": 2, "frames": [{"light": {<a light-space genotype dict>}, "fusion_stage": 1, "fusion_op": "add"},
...one per following frame]}. space_args: key, light_space, light_space_args, cycle_choices,
fusion_stage_choices, fusion_op_choices, num_keypoints.
"""
from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nas.genotype import Genotype, GenotypeError
from search_spaces.bounds import Bound, BoundError, check_args, is_int, is_list

FUSION_OPS = ("add", "mul", "cat")
LIGHT_SPACES = ("vipnas_mbv3", "vipnas_resnet")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_KEY = "genotypes/darts_cells_synthetic_seed0.json"
BOUNDS = {"num_keypoints": Bound(1, 256, "COCO-WholeBody has 133 keypoints")}
MAX_CYCLE = 64  # following frames per key frame; a video network rarely waits longer than ~2 s


def _key_genotype(key: str | dict) -> Genotype:
    """The key network's genotype from a file path (relative paths: the current directory, then the
    repository) or an inline genotype dict."""
    from nas.genotype import load
    if isinstance(key, dict):
        return Genotype.from_dict(key)
    if not isinstance(key, str):
        raise BoundError("key", f"must be a genotype file or an inline genotype, got {key!r}")
    path = Path(key).expanduser()
    if not path.is_file() and (REPO_ROOT / key).is_file():
        path = REPO_ROOT / key
    if not path.is_file():
        raise BoundError("key", f"genotype file {key} not found; pass a path to the key network's genotype")
    return load(path)


class HeatmapFusion(nn.Module):
    """Fuses K heatmaps into a (B, C, h, w) map (see the module docstring); starts as the identity."""

    def __init__(self, op: str, channels: int, keypoints: int):
        super().__init__()
        self.op = op
        if op == "cat":
            self.proj = nn.Conv2d(channels + keypoints, channels, 1)
            with torch.no_grad():
                self.proj.weight.zero_()
                self.proj.bias.zero_()
                self.proj.weight[:, :channels, 0, 0].copy_(torch.eye(channels))
        else:
            self.proj = nn.Conv2d(keypoints, channels, 1)
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(heat, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.op == "cat":
            return self.proj(torch.cat([x, h], dim=1))
        p = self.proj(h)
        return x + p if self.op == "add" else x * (1 + p)


class FusedLightNet(nn.Module):
    """A ViPNAS PoseNet (stem -> stages -> head) with the previous heatmaps fused after stage `stage`."""

    def __init__(self, net: nn.Module, stage: int, op: str, keypoints: int):
        super().__init__()
        self.net, self.stage = net, stage
        self.fusion = HeatmapFusion(op, _stage_channels(net, stage), keypoints)

    def forward(self, image: torch.Tensor, heat: torch.Tensor | None) -> torch.Tensor:
        x = self.net.stem(image)
        if self.stage == 0 and heat is not None:
            x = self.fusion(x, heat)
        for i, stage in enumerate(self.net.stages):
            x = stage(x)
            if i + 1 == self.stage and heat is not None:
                x = self.fusion(x, heat)
        return self.net.head(x)


def _stage_channels(net: nn.Module, stage: int) -> int:
    """Output channels of the stem (stage 0) or of stage i: the last conv/BN width in it."""
    module = net.stem if stage == 0 else net.stages[stage - 1]
    width = None
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            width = m.num_features
    if width is None:
        raise ValueError(f"cannot tell the output width of stage {stage}")
    return width


class TemporalPoseNet(nn.Module):
    """Runs clips online: (B, L, 3, H, W) -> (B, L, K, h, w), frame t by the key network when t % (T + 1)
    == 0, else by light network t % (T + 1) - 1 with frame t-1's heatmaps warped into frame t's crop.

    `affines` (B, L, 2, 3): each frame's image-pixel -> input-pixel affine; None: every frame is cropped the
    same (no warp). `step(image, affine)` is the same computation one frame at a time (`reset()` starts a
    new video)."""

    def __init__(self, key: nn.Module, lights: Sequence[FusedLightNet], input_size: Sequence[int]):
        super().__init__()
        self.key, self.lights = key, nn.ModuleList(lights)
        self.cycle, self.input_size = len(lights), tuple(int(v) for v in input_size)
        self.fuse = True  # False: light frames run without the propagated heatmaps (the no-fusion reference)
        self.reset()

    def reset(self) -> None:
        self._t, self._heat, self._affine = 0, None, None

    def freeze_key(self) -> "TemporalPoseNet":
        """Train the light networks only: the key network's weights stop learning and its BatchNorm
        statistics stay as they are (it stays in eval mode whatever `train()` is asked)."""
        self.key_frozen = True
        for p in self.key.parameters():
            p.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "TemporalPoseNet":
        super().train(mode)
        if getattr(self, "key_frozen", False):
            self.key.eval()
        return self

    def frame_net(self, t: int) -> str:
        """'key' or 'light<i>' for frame t of a video."""
        i = t % (self.cycle + 1)
        return "key" if i == 0 else f"light{i - 1}"

    def _frame(self, t: int, image: torch.Tensor, heat: torch.Tensor | None, prev_affine: torch.Tensor | None,
               affine: torch.Tensor | None) -> torch.Tensor:
        i = t % (self.cycle + 1)
        if i == 0:
            return self.key(image)
        if not self.fuse:
            heat = None
        if heat is not None:
            heat = heat.detach()
            if affine is not None and prev_affine is not None:
                from nas.data.video_clips import warp_heatmaps
                heat = warp_heatmaps(heat, prev_affine, affine, self.input_size, tuple(heat.shape[-2:]))
        return self.run_light(i - 1, image, heat)

    def run_light(self, frame: int, image: torch.Tensor, heat: torch.Tensor | None) -> torch.Tensor:
        """Light frame `frame` (0..T-1) of the cycle."""
        return self.lights[frame](image, heat)

    def forward(self, images: torch.Tensor, affines: torch.Tensor | None = None) -> torch.Tensor:
        if images.dim() != 5:
            raise ValueError(f"a temporal network takes clips (B, L, 3, H, W), got {tuple(images.shape)}")
        outs, heat = [], None
        for t in range(images.shape[1]):
            prev = affines[:, t - 1] if affines is not None and t > 0 else None
            heat = self._frame(t, images[:, t], heat, prev, affines[:, t] if affines is not None else None)
            outs.append(heat)
        return torch.stack(outs, dim=1)

    def step(self, image: torch.Tensor, affine: torch.Tensor | None = None) -> torch.Tensor:
        """One frame of the current video: (B, 3, H, W) [+ (B, 2, 3)] -> (B, K, h, w)."""
        heat = self._frame(self._t, image, self._heat, self._affine, affine)
        self._t, self._heat, self._affine = self._t + 1, heat, affine
        return heat


class ElasticFusion(nn.Module):
    """HeatmapFusion for every width up to `c_max` (the supernet's): a member of width c uses the first c
    output rows (and, for cat, the first c feature inputs plus the K heatmap inputs)."""

    def __init__(self, op: str, c_max: int, keypoints: int):
        super().__init__()
        self.op, self.c_max = op, c_max
        inputs = c_max + keypoints if op == "cat" else keypoints
        self.weight = nn.Parameter(torch.zeros(c_max, inputs))
        self.bias = nn.Parameter(torch.zeros(c_max))
        if op == "cat":
            with torch.no_grad():
                self.weight[:, :c_max].copy_(torch.eye(c_max))

    def weight_for(self, c: int) -> torch.Tensor:
        if self.op == "cat":
            return torch.cat([self.weight[:c, :c], self.weight[:c, self.c_max:]], dim=1)
        return self.weight[:c]

    def forward(self, x: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        h = F.interpolate(heat, size=x.shape[-2:], mode="bilinear", align_corners=False)
        weight, bias = self.weight_for(c)[:, :, None, None], self.bias[:c]
        if self.op == "cat":
            return F.conv2d(torch.cat([x, h], dim=1), weight, bias)
        p = F.conv2d(h, weight, bias)
        return x + p if self.op == "add" else x * (1 + p)

    @torch.no_grad()
    def inherit(self, target: HeatmapFusion) -> None:
        c = target.proj.out_channels
        target.proj.weight.copy_(self.weight_for(c)[:, :, None, None])
        target.proj.bias.copy_(self.bias[:c])


class TemporalSupernet(TemporalPoseNet):
    """One-shot supernet of the temporal space: the key network, ONE elastic light network (the light space's
    supernet) shared by every light frame, and a fusion module per (stage, op) choice. `set_path(genotype)`
    picks the cycle and, per light frame, the member, stage and op; `build(genotype, supernet)` copies a
    member's share of the weights into the standalone network."""

    def __init__(self, space: "TemporalSpace"):
        from nas.spaces import resolve
        key = Genotype.from_dict(space.key_genotype.to_dict())
        light = space.light.supernet()
        super().__init__(resolve(key).build(key), [], key.input_size)
        self.light = light
        largest = space.light.largest()
        widths = [largest["stem"]["width"]] + [space.light.out_channels(st) for st in largest["stages"]]
        self.fusions = nn.ModuleDict({f"s{s}_{op}": ElasticFusion(op, widths[s], space.args["num_keypoints"])
                                      for s in space.args["fusion_stage_choices"]
                                      for op in space.args["fusion_op_choices"]})
        self._space = space
        self.set_path(None)

    def set_path(self, genotype: Genotype | None, fuse: bool = True) -> None:
        """A member of the space (None: the largest light network on the longest cycle, first stage and op).
        `fuse=False` runs its light networks without the propagated heatmaps (a reference, not a member)."""
        a = self._space.args
        if genotype is None:
            frames = [{"light": self._space.light.largest(), "fusion_stage": a["fusion_stage_choices"][0],
                       "fusion_op": a["fusion_op_choices"][0]}] * max(a["cycle_choices"])
        else:
            self._space.validate(genotype)
            frames = genotype.genotype["frames"]
        self.frames, self.cycle, self.fuse = [dict(f) for f in frames], len(frames), fuse

    def set_key_only(self) -> None:
        """The key network on every frame (cycle 0): the reference a temporal network is compared with."""
        self.frames, self.cycle, self.fuse = [], 0, True

    def current(self) -> Genotype:
        """The member the supernet runs now (its light frames, stages and ops)."""
        return self._space._genotype(self.cycle, [dict(f) for f in self.frames])

    def run_light(self, frame: int, image: torch.Tensor, heat: torch.Tensor | None) -> torch.Tensor:
        f = self.frames[frame]
        path, stage, fusion = f["light"], f["fusion_stage"], self.fusions[f"s{f['fusion_stage']}_{f['fusion_op']}"]
        x = self.light.stem(image, path["stem"])
        if stage == 0 and heat is not None:
            x = fusion(x, heat)
        for i, (blocks, st) in enumerate(zip(self.light.stages, path["stages"])):
            for block in blocks[:st["depth"]]:
                x = block(x, st)
            if i + 1 == stage and heat is not None:
                x = fusion(x, heat)
        return self.light.head(x, path["head"]["deconv_channels"], path["head"]["deconv_groups"])


class TemporalSpace:
    """See the module docstring. CPU-sized defaults: the kept darts_cells genotype as the key network,
    light networks from the vipnas_mbv3 space's CPU default, T in 1..3."""

    name = "temporal"
    takes_clips = True  # its networks run clips (B, L, 3, H, W) -> (B, L, K, h, w); image spaces take (B, 3, H, W)

    def __init__(self, key: str | dict = DEFAULT_KEY, light_space: str = "vipnas_mbv3",
                 light_space_args: dict | None = None, cycle_choices: Sequence[int] = (1, 2, 3),
                 fusion_stage_choices: Sequence[int] | None = None, fusion_op_choices: Sequence[str] = FUSION_OPS,
                 num_keypoints: int = 17):
        from omegaconf import OmegaConf
        from nas.spaces import build_space
        plain = lambda v: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v  # noqa: E731
        key, light_space_args, cycle_choices = plain(key), plain(light_space_args), plain(cycle_choices)
        fusion_stage_choices, fusion_op_choices = plain(fusion_stage_choices), plain(fusion_op_choices)
        check_args(dict(num_keypoints=num_keypoints), BOUNDS)
        if light_space not in LIGHT_SPACES:
            raise BoundError("light_space", f"must be one of {', '.join(LIGHT_SPACES)}, got {light_space!r}")
        self.light = build_space(light_space, {**(light_space_args or {}), "num_keypoints": num_keypoints})
        stages = self.light.num_stages
        if fusion_stage_choices is None:
            fusion_stage_choices = list(range(stages + 1))
        for name, values, ok in (("cycle_choices", cycle_choices, lambda v: is_int(v) and 1 <= v <= MAX_CYCLE),
                                 ("fusion_stage_choices", fusion_stage_choices,
                                  lambda v: is_int(v) and 0 <= v <= stages),
                                 ("fusion_op_choices", fusion_op_choices, lambda v: v in FUSION_OPS)):
            if not is_list(values) or not values or not all(ok(v) for v in values) or \
                    len(set(map(repr, values))) != len(values):
                raise BoundError(name, f"must be a non-empty list of distinct choices, got {values!r} (cycles "
                                       f"1..{MAX_CYCLE}; stages 0..{stages}; ops {', '.join(FUSION_OPS)})")
        self.key_genotype = _key_genotype(key)
        self.args = dict(key=key if isinstance(key, str) else self.key_genotype.to_dict(), light_space=light_space,
                         light_space_args=dict(light_space_args or {}), cycle_choices=list(cycle_choices),
                         fusion_stage_choices=list(fusion_stage_choices),
                         fusion_op_choices=list(fusion_op_choices), num_keypoints=num_keypoints)

    # ---- genotypes ---------------------------------------------------------------------------------
    def _genotype(self, cycle: int, frames: list[dict]) -> Genotype:
        key = self.key_genotype
        return Genotype(space=self.name, space_args=copy.deepcopy(self.args),
                        genotype={"key": key.to_dict(), "cycle": cycle, "frames": frames},
                        input_size=key.input_size, heatmap_size=key.heatmap_size)

    def sample(self, rng: random.Random) -> Genotype:
        cycle = rng.choice(self.args["cycle_choices"])
        return self._genotype(cycle, self.sample_frames(rng, cycle))

    def validate(self, genotype: Genotype) -> None:
        from nas.spaces import resolve
        g = genotype.genotype
        if not isinstance(g, dict) or set(g) != {"key", "cycle", "frames"}:
            raise GenotypeError("field 'genotype' must be {\"key\": {...}, \"cycle\": T, \"frames\": [...]}")
        try:
            key = Genotype.from_dict(g["key"])
            resolve(key)
        except GenotypeError as err:
            raise GenotypeError(f"field 'genotype.key': {err}") from None
        if key.space == self.name:
            raise GenotypeError("field 'genotype.key': the key network must be an image network, not temporal")
        if g["cycle"] not in self.args["cycle_choices"] or not is_int(g["cycle"]):
            raise GenotypeError(f"field 'genotype.cycle': {g['cycle']!r} is not one of "
                                f"{self.args['cycle_choices']}")
        if not isinstance(g["frames"], list) or len(g["frames"]) != g["cycle"]:
            raise GenotypeError(f"field 'genotype.frames' must list {g['cycle']} frames (one per following frame)")
        for i, frame in enumerate(g["frames"]):
            where = f"genotype.frames[{i}]"
            if not isinstance(frame, dict) or set(frame) != {"light", "fusion_stage", "fusion_op"}:
                raise GenotypeError(f"field '{where}' must be {{\"light\", \"fusion_stage\", \"fusion_op\"}}")
            if frame["fusion_stage"] not in self.args["fusion_stage_choices"] or not is_int(frame["fusion_stage"]):
                raise GenotypeError(f"field '{where}.fusion_stage': {frame['fusion_stage']!r} is not one of "
                                    f"{self.args['fusion_stage_choices']}")
            if frame["fusion_op"] not in self.args["fusion_op_choices"]:
                raise GenotypeError(f"field '{where}.fusion_op': {frame['fusion_op']!r} is not one of "
                                    f"{self.args['fusion_op_choices']}")
            try:
                self.light.validate(Genotype(space=self.light.name, space_args={}, genotype=frame["light"]))
            except GenotypeError as err:
                raise GenotypeError(f"field '{where}.light': {str(err).replace('field ', '', 1)}") from None

    def supernet(self) -> TemporalSupernet:
        return TemporalSupernet(self)

    def reference_points(self, supernet: TemporalSupernet, best: Genotype) -> dict[str, tuple]:
        """What a video network is compared with, for the search's Pareto plot: {label: (configure the
        supernet, genotype, standalone network) } for the key network on every frame and `best` without fusion
        (same networks and compute, light frames blind to the previous heatmaps)."""
        from nas.spaces import resolve
        key = Genotype.from_dict(best.genotype["key"])
        blind = self.build(best)
        blind.fuse = False
        return {"key network on every frame": (supernet.set_key_only, key, resolve(key).build(key)),
                "best, light frames without fusion": (lambda: supernet.set_path(best, fuse=False), best, blind)}

    def decode(self, supernet: TemporalSupernet) -> Genotype:
        """The member the supernet runs now (a one-shot space has no architecture weights to read)."""
        return supernet.current()

    # ---- evolution's genes: the cycle, then per light frame its network, stage and op ----------------
    def mutate(self, parent: Genotype, rng: random.Random, prob: float) -> Genotype:
        """With `prob`, a new cycle length (frames cut, or new random frames appended); then each light frame's
        genes (its network's leaves, its fusion stage and op) redrawn with `prob` each, from a random member.
        The key network never mutates (it is the space's)."""
        from strategies.genes import leaves, set_leaf, get_leaf
        frames = copy.deepcopy(parent.genotype["frames"])
        if len(self.args["cycle_choices"]) > 1 and rng.random() < prob:
            cycle = rng.choice([c for c in self.args["cycle_choices"] if c != len(frames)])
            frames = frames[:cycle] + self.sample_frames(rng, cycle)[len(frames):]
        donor = self.sample_frames(rng, len(frames))
        for frame, other in zip(frames, donor):
            for path, _ in list(leaves(frame)):
                if rng.random() < prob:
                    try:
                        set_leaf(frame, path, copy.deepcopy(get_leaf(other, path)))
                    except (KeyError, IndexError):  # the donor's network has another shape there
                        continue
        return self._genotype(len(frames), frames)

    def crossover(self, a: Genotype, b: Genotype, rng: random.Random) -> Genotype:
        """The cycle length of either parent; each light frame whole from a or b where both have it."""
        fa, fb = a.genotype["frames"], b.genotype["frames"]
        cycle = rng.choice([len(fa), len(fb)])
        longer = fa if len(fa) >= cycle else fb
        frames = [copy.deepcopy(rng.choice([x for x in (fa, fb) if len(x) > i])[i]) if i < min(len(fa), len(fb))
                  else copy.deepcopy(longer[i]) for i in range(cycle)]
        return self._genotype(cycle, frames)

    def sample_frames(self, rng: random.Random, count: int) -> list[dict]:
        return [{"light": self.light.sample(rng).genotype,
                 "fusion_stage": rng.choice(self.args["fusion_stage_choices"]),
                 "fusion_op": rng.choice(self.args["fusion_op_choices"])} for _ in range(count)]

    def build(self, genotype: Genotype, supernet: TemporalSupernet | None = None) -> TemporalPoseNet:
        """The standalone network; with `supernet`, it starts from the supernet's key network and from each
        light frame's share of the shared light network and of its fusion module."""
        from nas.spaces import resolve
        self.validate(genotype)
        g = genotype.genotype
        key = Genotype.from_dict(g["key"])
        key_net = resolve(key).build(key)
        size = tuple(genotype.input_size)
        lights = []
        for f in g["frames"]:
            member = Genotype(space=self.light.name, space_args={}, genotype=f["light"])
            light = FusedLightNet(self.light.build(member, supernet.light if supernet is not None else None),
                                  f["fusion_stage"], f["fusion_op"], self.args["num_keypoints"])
            if supernet is not None:
                supernet.fusions[f"s{f['fusion_stage']}_{f['fusion_op']}"].inherit(light.fusion)
            lights.append(light)
        if supernet is not None:
            key_net.load_state_dict(supernet.key.state_dict())
        return TemporalPoseNet(key_net, lights, size)

    def describe(self, genotype: Genotype) -> str:
        g = genotype.genotype
        frames = ", ".join(f"{f['fusion_op']}@{f['fusion_stage']}" for f in g["frames"])
        return f"key {g['key']['space']} + {g['cycle']} light frame(s): {frames}"
