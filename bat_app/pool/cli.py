"""``python -m bat_app pool {build,info,search,generate}``: build a backbone pool, describe one,
look in one, or make one from the backbone's own samples.

    python -m bat_app pool build laion-shards/ --out pools/laion --clip-model ViT-L-14 --clip-pretrained openai
    python -m bat_app pool build photos/ --out pools/shapes --clip-model shapes
    python -m bat_app pool build cr-out/ --out pools/cr --clip-model ViT-B-32 --clip-pretrained openai
    python -m bat_app pool info pools/laion
    python -m bat_app pool search pools/laion "a corgi on a beach" --k 20 --out sheet.png
    python -m bat_app pool generate --model sd15 --class-noun dog --n 1000 --out pools/dog-gen

A killed ``build`` continues where it stopped when run again with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bat_app.pool.safety import CLIP_MODES, SafetyConfig

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"


def register(subparsers) -> None:
    p = subparsers.add_parser("pool", help="backbone pools: build (from images, embeddings or the "
                                           "Hub), info, search, generate",
                              description="Build a backbone pool (items + CLIP embeddings + faiss "
                                          "index) or describe one.")
    sub = p.add_subparsers(title="pool commands", metavar="POOL_COMMAND")

    b = sub.add_parser("build", help="embed a source into a pool folder (resumable)",
                       description="SOURCE: a folder of images with same-name .txt captions, "
                                   "webdataset .tar shards (img2dataset), parquet files with image "
                                   "bytes or paths and a caption column, clip-retrieval output "
                                   "(img_emb/ + metadata/, taken without re-embedding), or a Hub "
                                   "dataset hf://datasets/OWNER/NAME[@REV][/SUBDIR] whose parquet or "
                                   ".tar shards are streamed (no full download; resumable per shard).")
    b.add_argument("source", metavar="SOURCE",
                   help="a folder or file, or hf://datasets/OWNER/NAME[@REV][/SUBDIR] (streamed)")
    b.add_argument("--out", type=Path, required=True, metavar="POOL", help="pool folder")
    b.add_argument("--clip-model", default=None,
                   help=f"open_clip name, 'shapes', or an open_clip model folder (default {DEFAULT_MODEL})")
    b.add_argument("--clip-pretrained", default=None,
                   help=f"open_clip pretrained tag or weights file (default {DEFAULT_PRETRAINED})")
    b.add_argument("--batch-size", type=int, default=64, help="images per model call (default 64)")
    b.add_argument("--index", choices=("auto", "flat", "ivf", "hnsw"), default="auto",
                   help="default auto: exact (flat) up to --flat-max items, else ivf")
    b.add_argument("--index-file", default=None, metavar="FAISS_INDEX",
                   help="clip-retrieval output: adopt this autofaiss index as is (default: "
                        "image.index / knn.index found in SOURCE, with --index auto)")
    b.add_argument("--flat-max", type=int, default=None, help="largest pool indexed exactly (default 50000)")
    b.add_argument("--source-kind", choices=("folder", "webdataset", "parquet", "clip-retrieval", "hub"),
                   default=None, help="default: detected from the layout")
    b.add_argument("--caption-column", "--caption-col", dest="caption_column", default=None,
                   help="parquet (local or Hub): caption column (default: detected)")
    b.add_argument("--image-column", "--image-col", dest="image_column", default=None,
                   help="parquet (local or Hub): image bytes/path column (default: detected)")
    b.add_argument("--no-copy-images", action="store_true",
                   help="reference local image files instead of copying their bytes into the pool")
    b.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    s = b.add_argument_group("content checks", "score items as unsafe / watermarked; flagged "
                             "items are never selected nor shown by default (docs/pool.md)")
    s.add_argument("--no-unsafe-check", action="store_true", help="do not score unsafe content")
    s.add_argument("--no-watermark-check", action="store_true", help="do not score watermarks")
    s.add_argument("--clip-safety", choices=CLIP_MODES, default="auto",
                   help="zero-shot CLIP check where the source has no punsafe/pwatermark column: "
                        "auto (web-trained CLIPs only), on, off (default auto)")
    s.add_argument("--unsafe-threshold", type=float, default=0.5, help="flag above this score (default 0.5)")
    s.add_argument("--watermark-threshold", type=float, default=0.5, help="flag above this score (default 0.5)")
    b.set_defaults(func=run_build)

    i = sub.add_parser("info", help="print a pool's size, model, index and sources")
    i.add_argument("pool", type=Path, metavar="POOL")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=run_info)

    q = sub.add_parser("search", help="the pool items nearest to a text or an image",
                       description="Search a pool with its own CLIP and print the hits; --out "
                                   "writes a contact sheet of their images.")
    q.add_argument("pool", type=Path, metavar="POOL")
    q.add_argument("query", metavar="QUERY", help="text, or the path of an image file")
    q.add_argument("--k", type=int, default=20, help="number of hits (default 20)")
    q.add_argument("--out", type=Path, default=None, metavar="SHEET.png", help="write a contact sheet")
    q.add_argument("--columns", type=int, default=5, help="contact sheet columns (default 5)")
    q.add_argument("--clip-model", default=None,
                   help="the pool's CLIP, when it cannot be loaded from the manifest (local folders)")
    q.add_argument("--clip-pretrained", default=None, help="with --clip-model: pretrained tag or weights file")
    q.add_argument("--include-flagged", action="store_true",
                   help="show items flagged unsafe/watermarked too (marked in the output)")
    q.add_argument("--json", action="store_true", help="print the hits as JSON lines")
    q.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    q.set_defaults(func=run_search)
    g = sub.add_parser("generate", help="a pool of the backbone's own samples (no dataset needed)",
                       description="Sample --n images of --class-noun from the backbone for varied "
                                   "captions (a prompt set kept as data) and build a pool of them. "
                                   "Samples are cached per model, prompt set, noun and seed: a "
                                   "killed run resumes, a bigger --n tops up.")
    g.add_argument("--model", required=True, help="preset (shapes, sd15), local folder or hub id")
    g.add_argument("--class-noun", required=True, help="what the pool shows, e.g. dog")
    g.add_argument("--n", type=int, default=1000, help="images (default 1000)")
    g.add_argument("--out", type=Path, required=True, metavar="POOL", help="pool folder")
    g.add_argument("--prompts", type=Path, default=None,
                   help="prompt set JSON (templates, contexts, styles, viewpoints; default the shipped one)")
    g.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default 0)")
    g.add_argument("--steps", type=int, default=None, help="sampling steps (default: the preset's)")
    g.add_argument("--batch-size", type=int, default=4, help="images per pipeline call (default 4)")
    g.add_argument("--clip-model", default=None,
                   help="the pool's CLIP (default: shapes for the shapes backbone, else ViT-B-32)")
    g.add_argument("--clip-pretrained", default=None, help="with --clip-model: pretrained tag or weights file")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    g.add_argument("--no-safety-checker", dest="safety_checker", action="store_false",
                   help="keep samples the model's safety checker would flag (default: such samples are "
                        "stored grey and scored unsafe, so never selected)")
    g.set_defaults(func=run_generate)
    p.set_defaults(func=lambda args: p.print_help() or 1)


def run_build(args: argparse.Namespace) -> int:
    from bat_app.pool import FLAT_MAX, PoolError, build_pool, embedder_id, load_embedder, open_source
    from bat_app.pool.embedder import known_dim

    source = open_source(args.source, kind=args.source_kind, caption_column=args.caption_column,
                         image_column=args.image_column)
    model = args.clip_model or DEFAULT_MODEL
    pretrained = args.clip_pretrained or (None if args.clip_model else DEFAULT_PRETRAINED)
    if source.has_embeddings:
        if args.clip_model is None:
            raise PoolError(f"{args.source} is clip-retrieval output, which does not record its "
                            "model: pass the one it used with --clip-model and --clip-pretrained "
                            "(clip-retrieval's default is --clip-model ViT-B-32 --clip-pretrained openai).")
        dim = known_dim(model)
        if dim is not None and dim != source.dim:
            raise PoolError(f"The embeddings in {args.source} have {source.dim} dimensions but "
                            f"{model} makes {dim}: pass the model clip-retrieval used.")
        embedder = embedder_id(model, pretrained)
    else:
        embedder = load_embedder(model, pretrained, device=args.device)
    print(f"building a pool from {source.kind} source {args.source} with "
          f"{embedder if isinstance(embedder, str) else embedder.model_id} -> {args.out}", file=sys.stderr)
    safety = SafetyConfig(unsafe=not args.no_unsafe_check, watermark=not args.no_watermark_check,
                          clip=args.clip_safety, unsafe_threshold=args.unsafe_threshold,
                          watermark_threshold=args.watermark_threshold)
    if isinstance(embedder, str):
        embedder = _text_tower_for_safety(embedder, model, pretrained, safety, args.device)
    bar = TqdmBuildProgress()
    try:
        pool = build_pool(source, args.out, embedder, batch_size=args.batch_size, progress=bar,
                          index=args.index, flat_max=args.flat_max or FLAT_MAX,
                          copy_images=not args.no_copy_images, safety=safety,
                          index_file=args.index_file)
    finally:
        bar.close()
    print(pool.describe())
    return 0


def _text_tower_for_safety(model_id: str, model: str, pretrained, safety, device):
    """Adopted embeddings need no model, but the zero-shot content check needs the model's text
    tower: load it when that check would run, else keep the id (nothing is loaded)."""
    from bat_app.pool import PoolError, load_embedder
    from bat_app.pool.safety import clip_check_runs

    if not clip_check_runs(safety, model_id, object())[0]:
        return model_id
    try:
        return load_embedder(model, pretrained, device=device)
    except PoolError as exc:
        # Recorded in the manifest ("clip check: not run") and shown by `pool info`.
        print(f"warning: the CLIP content check cannot run ({exc}); items without "
              "punsafe/pwatermark columns stay unscored. Pass --clip-safety off to silence "
              "this.", file=sys.stderr)
        return model_id


def run_search(args: argparse.Namespace) -> int:
    from bat_app.pool import Pool, embedder_for_pool
    from bat_app.pool.search import contact_sheet, search

    with Pool.open(args.pool) as pool:
        embedder = embedder_for_pool(pool, args.clip_model, args.clip_pretrained, device=args.device)
        hits = search(pool, embedder, args.query, k=args.k, include_flagged=args.include_flagged)
        for hit in hits:
            if args.json:
                print(json.dumps(hit.to_dict(), ensure_ascii=False))
            else:
                flags = f" [{','.join(hit.flags)}]" if hit.flags else ""
                print(f"{hit.rank:>4}  {hit.score:.4f}  id {hit.id:<8} {hit.caption[:100]}{flags}")
        if not hits:
            print(f"no items: the pool's {len(pool)} items are all hidden by the content filters "
                  f"({', '.join(pool.filters)}); pass --include-flagged to see them.", file=sys.stderr)
            return 1
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            contact_sheet(pool, hits, columns=args.columns).save(args.out)
            print(f"contact sheet: {args.out}", file=sys.stderr)
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bat_app.models import load_components
    from bat_app.paths import cache_dir
    from bat_app.preview.sample import backbone_sampler
    from bat_app.pool import load_embedder
    from bat_app.pool.generate import generate_pool, load_prompt_set

    prompts = load_prompt_set(args.prompts)  # checked before the model is loaded
    components = load_components(args.model, device=args.device)
    spec = components.spec
    if args.clip_model is None and spec.preset == "shapes":
        embedder = load_embedder("shapes", device=args.device)
    else:
        embedder = load_embedder(args.clip_model or DEFAULT_MODEL,
                                 args.clip_pretrained or (None if args.clip_model else DEFAULT_PRETRAINED),
                                 device=args.device)
    sampler, model_key = backbone_sampler(components, args.steps, args.safety_checker)
    steps = json.loads(model_key)["steps"]
    bar = tqdm(total=args.n, desc="sample", unit="image", dynamic_ncols=True)

    def progress(done, total):
        bar.n = done
        bar.refresh()

    print(f"generating {args.n} images of {args.class_noun!r} with {spec.source} ({steps} steps at "
          f"{spec.resolution} px), CLIP {embedder.model_id} -> {args.out}", file=sys.stderr)
    build_bar = TqdmBuildProgress()
    try:
        pool = generate_pool(sampler, model_key, args.class_noun, args.n, args.out, embedder,
                             prompts=prompts, seed=args.seed, batch_size=args.batch_size,
                             cache_root=cache_dir(), progress=progress, build_progress=build_bar)
    finally:
        bar.close()
        build_bar.close()
    print(pool.describe())
    return 0


def run_info(args: argparse.Namespace) -> int:
    from bat_app.pool import Pool

    with Pool.open(args.pool) as pool:
        print(json.dumps(pool.manifest, indent=1) if args.json else pool.describe())
    return 0


class TqdmBuildProgress:
    """build_pool's progress events -> a tqdm bar of source records (kept/skipped in the postfix)."""

    def __init__(self):
        self.bar = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.stage == "index":
            self.close()
            if event.step == 0:
                print(f"indexing {event.items} items ({event.message})...", file=sys.stderr)
            return
        if self.bar is None:
            self.bar = tqdm(total=event.total, desc="embed", unit="item", dynamic_ncols=True,
                            mininterval=1.0)
            self.bar.n = self.bar.last_print_n = event.step
        self.bar.update(event.step - self.bar.n)
        self.bar.set_postfix(kept=event.items, skipped=event.skipped, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
