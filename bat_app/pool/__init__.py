"""The backbone pool: image-caption items from the backbone's pretraining data, one CLIP
embedding each, and a faiss index over them (DESIGN.md, "Backbone pool"; docs/pool.md).

    from bat_app.pool import Pool, build_pool, load_embedder
    emb = load_embedder("ViT-B-32", "laion2b_s34b_b79k")       # or "shapes", or a folder
    pool = build_pool("laion-shards/", "pools/laion", emb)      # resumable; returns the Pool
    pool = Pool.open("pools/laion", emb)                        # refuses another model
    scores, ids = pool.search(emb.encode_images(photos), k=1000)
    pool.item(int(ids[0, 0])).caption, pool.load_image(int(ids[0, 0]))
    hits = search(pool, embedder_for_pool(pool), "a corgi", k=20)   # text or image path
    contact_sheet(pool, hits).save("sheet.png")

Command line: ``python -m bat_app pool build SOURCE --out POOL``, ``pool info POOL`` and
``pool search POOL QUERY [--out sheet.png]``.

Modules:
    embedder   Embedder protocol, open_clip / shapes / local-folder loading
    sources    one Source per input layout (folder, webdataset, parquet, clip-retrieval, hub)
    store      the files of a pool folder, appended while building
    index      flat / ivf / hnsw behind one VectorIndex interface
    adopted    an autofaiss / clip-retrieval index taken as is (the fourth VectorIndex)
    build      build_pool: embed in committed batches (resumable), then index
    pool       Pool, PoolItem: open, search, items, images, content filters
    safety     content scores (source columns or zero-shot CLIP) and flags
    search     text/image search with the pool's CLIP, contact sheets
    generate   self-generated pools: backbone samples for a prompt set, cached
"""

from bat_app.pool.build import build_pool
from bat_app.pool.embedder import (Embedder, OpenClipEmbedder, embedder_for_pool, embedder_id,
                                   load_embedder)
from bat_app.errors import PoolError
from bat_app.pool.index import FLAT_MAX, choose_index
from bat_app.pool.pool import Pool, PoolItem
from bat_app.pool.safety import SafetyConfig
from bat_app.pool.search import SearchHit, contact_sheet, search
from bat_app.pool.sources import open_source

__all__ = ["FLAT_MAX", "Embedder", "OpenClipEmbedder", "Pool", "PoolError",
           "PoolItem", "SafetyConfig", "SearchHit", "build_pool", "choose_index", "contact_sheet",
           "embedder_for_pool", "embedder_id", "load_embedder", "open_source", "search"]
