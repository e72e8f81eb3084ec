"""Every registered model's name, module and one-line summary, as plain data: `ctrscale ls` reads this instead of
importing the models (and torch), which takes seconds. tests/test_cli.py checks it against the registry
(`registry.entries()`), so a model added to the zoo must be added here too, with its @register summary."""
from __future__ import annotations

MODELS: dict[str, tuple[str, str]] = {  # name -> (module under ctrscale.models, summary)
    "autoint": ("autoint", "AutoInt: multi-head self-attention interacting layers over DIN-pooled tokens"),
    "bst": ("bst", "BST: Transformer over the history and the target item"),
    "can": ("can", "CAN: candidate-generated micro-MLPs co-acting with behaviors and user features, "
                   "beside DIN"),
    "dcnv2": ("dcnv2", "DCN-V2: cross network (full or low-rank) and deep MLP over DIN-pooled tokens or plain inputs"),
    "deepfm": ("deepfm", "DeepFM: factorization machine and MLP over shared field embeddings"),
    "din": ("din", "DIN: candidate-to-history target attention"),
    "est": ("est", "EST: lightweight cross-attention + content sparse attention over unified tokens"),
    "eta": ("eta", "ETA: SimHash top-k retrieval from the long history + multi-head target attention"),
    "fat": ("fat", "FAT: field-aware transformer (per-field projections from a hypernetwork, alpha)"),
    "ffm": ("ffm", "FFM: field-aware factorization machine (per field-pair latent vectors)"),
    "hiformer": ("hiformer", "HiFormer: heterogeneous (token-specific) attention over DIN-pooled tokens"),
    "hstu": ("hstu", "HSTU: pointwise (SiLU) aggregated attention with time/position bias"),
    "lightsuan": ("suan", "LightSUAN: SUAN with local + dilated sparse attention (k=4, r=2)"),
    "longer": ("longer", "LONGER: token merge (InnerTrans) + hybrid cross/self attention with global tokens, "
                         "KV-cached"),
    "mlp": ("mlp", "Embedding + MLP over all fields and the mean-pooled history (or over token inputs)"),
    "mtgr": ("mtgr", "MTGR: HSTU over [user features ; history ; candidates with cross features], group layer "
                     "norm, dynamic masking"),
    "onetrans": ("onetrans", "OneTrans: one causal transformer over [behaviors ; feature tokens], mixed parameters; "
                             "candidate_sequence pool / din / full = OneTrans / -D / -F"),
    "rankmixer": ("rankmixer", "RankMixer: token mixing + per-token FFNs over DIN-pooled tokens"),
    "sim": ("sim", "SIM: GSU (hard/soft search over the whole history) + multi-head ESU with time intervals, DIN "
                   "over recent behaviors"),
    "sparsectr": ("sparsectr", "SparseCTR: time-chunked three-branch EvoAttention + RelTemporal (listwise; S2 "
                               "preset)"),
    "suan": ("suan", "SUAN: stacked unified attention blocks over the target-aware sequence"),
    "transformer": ("fat", "Plain transformer over field tokens (FAT with field awareness off)"),
    "twinv2": ("twinv2", "TWIN-V2: clustered history, consistency-preserved GSU, cluster-aware ESU"),
    "wukong": ("wukong", "Wukong: stacked factorization-machine and linear-compression blocks"),
}
