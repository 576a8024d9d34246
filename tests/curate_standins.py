"""Stand-ins for `forge_nb.data.filters`, `redact` and `dedup` (branch `filters`), used ONLY by tests while that branch
is not merged: the same function names and signatures as the interface contract, with deliberately small logic.
`install()` puts them in `sys.modules` when the real modules are missing (and does nothing once they exist)."""
import hashlib, importlib.util, re, sys, types

import numpy as np

_STOP = {"the", "a", "an", "and", "of", "to", "in", "is", "are", "for", "on", "with", "by", "be", "it", "this", "that", "as", "at", "or"}


def check_document(text, cfg):
    words = text.split()
    if len(words) < cfg.min_words: return "too_short"
    if len(words) > cfg.max_words: return "too_long"
    if cfg.languages and sum(w.lower() in _STOP for w in words) / len(words) < 0.03: return "language"
    if cfg.quality and sum(text.count(c) for c in "#…") / len(words) > cfg.max_symbol_ratio: return "quality:symbol_ratio"
    return None


def boilerplate_lines(texts, cfg):
    seen = {}
    for t in texts:
        for line in {ln.strip() for ln in t.splitlines() if ln.strip()}: seen[line] = seen.get(line, 0) + 1
    need = max(cfg.boilerplate_min_docs, cfg.boilerplate_min_share * len(texts))
    return {ln for ln, n in seen.items() if n >= need}


def strip_lines(text, lines):
    return "\n".join(ln for ln in text.splitlines() if ln.strip() not in lines)


_PATTERNS = {"EMAIL": r"[\w.+-]+@[\w-]+\.[\w.-]+", "IBAN": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}\b",
             "CARD": r"\b(?:\d[ -]?){13,16}\b", "IP": r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
             "PHONE": r"\+?\d[\d ()-]{7,}\d", "SECRET": r"\b(?:sk-[A-Za-z0-9]{16,}|AKIA[A-Z0-9]{16})\b"}


def redact(text, cfg):
    counts = {}
    if not cfg.enabled: return text, counts
    pats = [(t, _PATTERNS[t]) for t in ("SECRET", "EMAIL", "IBAN", "CARD", "IP", "PHONE") if t in cfg.types]
    pats += [(c.name, c.pattern) for c in cfg.custom]
    for name, pat in pats:
        def sub(m, name=name):
            if any(a in m.group(0) for a in cfg.allow): return m.group(0)
            counts[name] = counts.get(name, 0) + 1
            return f"<{name}>"
        text = re.sub(pat, sub, text)
    return text, counts


def _perms(cfg):
    rng = np.random.default_rng(cfg.seed)
    return rng.integers(1, 2**63, cfg.num_perm, dtype=np.uint64) | np.uint64(1), rng.integers(0, 2**63, cfg.num_perm, dtype=np.uint64)


def minhash_signature(text, cfg):
    w = text.lower().split()
    grams = {" ".join(w[i:i + cfg.ngram]) for i in range(max(1, len(w) - cfg.ngram + 1))}
    h = np.array([int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") for g in grams], dtype=np.uint64)
    a, b = _perms(cfg)
    return (h[:, None] * a[None, :] + b[None, :]).min(axis=0)


def near_duplicate_clusters(ids, signatures, cfg):
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    parent = {ids[i]: ids[i] for i in order}
    def find(x):
        while parent[x] != x: parent[x] = parent[parent[x]]; x = parent[x]
        return x
    buckets = {}
    for i in order:
        for b in range(cfg.bands):
            buckets.setdefault((b, signatures[i][b * cfg.rows:(b + 1) * cfg.rows].tobytes()), []).append(i)
    for members in buckets.values():
        for j in members[1:]:
            i = members[0]
            if np.mean(signatures[i] == signatures[j]) >= cfg.threshold:
                ri, rj = find(ids[i]), find(ids[j])
                if ri != rj: parent[max(ri, rj)] = min(ri, rj)
    return {x: find(x) for x in parent}


def install():
    "Register the stand-ins as `forge_nb.data.filters/redact/dedup` where those modules do not exist yet."
    fns = {"filters": [check_document, boilerplate_lines, strip_lines], "redact": [redact],
           "dedup": [minhash_signature, near_duplicate_clusters]}
    for name, members in fns.items():
        full = f"forge_nb.data.{name}"
        if full in sys.modules or importlib.util.find_spec(full) is not None: continue
        mod = types.ModuleType(full); mod.__dict__.update({f.__name__: f for f in members}); mod.STANDIN = True
        sys.modules[full] = mod
        import forge_nb.data
        setattr(forge_nb.data, name, mod)
