"""Benchmark of the text-level curation pieces (forge_nb.data.filters, .redact, .dedup) on data this script GENERATES
(no download, no file of this machine): what the quality filter drops, PII recall and false redactions, near-duplicate
recall by measured 5-gram Jaccard, and the speed of each, with same-run baselines. Speeds are CPU time of this one
process (`time.process_time`), i.e. per core, so they hold on a shared, loaded machine; wall time is printed at the end.

    .venv/bin/python bench/bench_curate_text.py            # the reported figures (a few minutes on 2 busy cores)
    .venv/bin/python bench/bench_curate_text.py --quick    # what `bench/run --quick` runs: smaller sets
    unshare -n .venv/bin/python bench/bench_curate_text.py # the same with the network off

Filters: documents of five kinds an organization has (memos, policies that mention "privacy policy" and "terms of
use", tables of figures, bullet lists, mixed Markdown) must all be kept; four kinds of junk (symbol soup, pasted
repetition, base64 blobs, truncated snippets) and French/German documents must be dropped. Throughput is documents/s
for `check_document` with the language check, against the quality rules alone in the same run.

PII: one planted value per sentence (e-mails, cards with valid Luhn, IBANs with valid mod-97, IPv4/IPv6, phone
numbers valid by libphonenumber in several formats, secrets); recall counts a planted value as found when one
redacted span of the right type covers it. Clean sentences hold order ids, dates, versions, prices, times and
quantities; a false redaction is a clean sentence with anything redacted. Speed is characters/s on one core
(this process), against Presidio's pattern recognizers on the same text when `presidio-analyzer` is installed.

Near duplicates: distinct documents from the same templates (so they share common phrases, as real documents do)
plus planted copies edited at several rates; each planted pair's true 5-gram Jaccard is computed exactly and the
pairs are bucketed by it. Recall is per bucket; a false merge is a document clustered with one from another
group. Signature speed is against datasketch's MinHash (`update_batch`, same shingles, same permutations count)
when datasketch is installed.
"""
import argparse, os, random, sys, time
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import emit, figure   # noqa: E402

# ---------------------------------------------------------------------------------------------- text generation
NOUNS = ("budget report contract invoice policy employee customer supplier meeting project deadline account manager "
         "team office department request approval review audit schedule payment order shipment warehouse product "
         "quarter forecast risk incident server database backup release license training handbook procedure "
         "committee board member director vendor agreement renewal proposal estimate margin revenue expense").split()
VERBS = ("approve review submit update confirm schedule cancel extend reduce increase prepare send check sign "
         "archive assign escalate close open process record report request transfer verify").split()
ADJS = ("annual quarterly internal external urgent pending final revised new current previous regional global "
        "standard temporary permanent confidential public critical minor major").split()
PEOPLE = ("the finance team|the legal department|each manager|all staff|the project lead|the service desk|"
          "the auditors|the board|every contractor|the data protection officer").split("|")

def sentence(r: random.Random) -> str:
    t = r.randrange(6)
    n1, n2, a, v, p = r.choice(NOUNS), r.choice(NOUNS), r.choice(ADJS), r.choice(VERBS), r.choice(PEOPLE)
    if t == 0: return f"{p.capitalize()} must {v} the {a} {n1} before the {n2} is closed."
    if t == 1: return f"The {a} {n1} for the {n2} was sent to {p} on {r.choice(['Monday', 'Tuesday', 'Friday'])}."
    if t == 2: return f"Please {v} every {n1} that refers to a {a} {n2}, and tell {p} when it is done."
    if t == 3: return f"In the {r.choice(['first', 'second', 'third', 'last'])} quarter the {n1} {r.choice(['rose', 'fell', 'stayed flat'])} because of the {a} {n2}."
    if t == 4: return f"{p.capitalize()} will {v} the {n1} and the {a} {n2} at the next meeting."
    return f"If a {n1} is {a}, {p} should {v} it within {r.randint(2, 30)} days."

def paragraph(r, k=None): return " ".join(sentence(r) for _ in range(k or r.randint(3, 6)))

def doc_memo(r):
    return f"# {r.choice(ADJS).capitalize()} {r.choice(NOUNS)} memo\n\n" + "\n\n".join(paragraph(r) for _ in range(r.randint(3, 6))) + "\n"

def doc_policy(r):
    secs = [f"## {i + 1}. {r.choice(ADJS).capitalize()} {r.choice(NOUNS)}s\n\n{paragraph(r)}" for i in range(r.randint(3, 5))]
    return ("# Privacy policy and terms of use\n\nThis privacy policy and these terms of use describe how the company "
            "handles personal data. Read the privacy policy before you accept the terms of use\n\n" + "\n\n".join(secs) + "\n")

def doc_table(r):
    rows = [f"| {r.choice(ADJS).capitalize()} {r.choice(NOUNS)} | {r.randint(1, 99_999):,} | {r.uniform(-20, 40):.1f}% | Q{r.randint(1, 4)} {r.randint(2019, 2026)} |"
            for _ in range(r.randint(8, 30))]
    return (f"# {r.choice(NOUNS).capitalize()} figures\n\n{paragraph(r, 2)}\n\n| Item | Amount | Change | Period |\n|---|---:|---:|---|\n"
            + "\n".join(rows) + "\n\nSource: internal finance system\n")

def doc_list(r):
    items = [f"- {r.choice(VERBS).capitalize()} the {r.choice(ADJS)} {r.choice(NOUNS)}" for _ in range(r.randint(8, 25))]
    steps = [f"{i + 1}. {sentence(r)}" for i in range(r.randint(3, 8))]
    return f"# {r.choice(NOUNS).capitalize()} checklist\n\n" + "\n".join(items) + "\n\n## Steps\n\n" + "\n".join(steps) + "\n"

def doc_mixed(r):
    return doc_memo(r) + "\n" + doc_list(r) + "\n" + doc_table(r)

GOOD = {"memo": doc_memo, "policy": doc_policy, "table": doc_table, "list": doc_list, "mixed": doc_mixed}

def junk_symbols(r): return " ".join("".join(r.choice("~^{}\\|<>¤▒■□◆§¶†‡") for _ in range(r.randint(2, 6))) + " " + r.choice(NOUNS) for _ in range(80))
def junk_repeat(r): return "\n".join([sentence(r)] * 30 + [sentence(r) for _ in range(3)])
def junk_base64(r):
    import base64
    return "attachment: " + " ".join(base64.b64encode(r.randbytes(60)).decode() for _ in range(40))
def junk_snippets(r): return "\n".join(sentence(r)[:-1].rsplit(" ", 2)[0] + " ..." for _ in range(30))

JUNK = {"symbols": junk_symbols, "repetition": junk_repeat, "base64": junk_base64, "truncated": junk_snippets}
FOREIGN = {"fr": ["Le rapport annuel du département financier doit être approuvé par le conseil avant la fin du mois.",
                  "Chaque employé doit envoyer ses notes de frais au service comptable dans les dix jours ouvrés.",
                  "La politique de confidentialité décrit comment l'entreprise traite les données personnelles."],
           "de": ["Der Jahresbericht der Finanzabteilung muss vor dem Monatsende vom Vorstand genehmigt werden.",
                  "Jeder Mitarbeiter sendet seine Reisekostenabrechnung innerhalb von zehn Arbeitstagen an die Buchhaltung.",
                  "Die Datenschutzrichtlinie beschreibt, wie das Unternehmen personenbezogene Daten verarbeitet."]}

def doc_foreign(r, lang): return " ".join(r.sample(FOREIGN[lang], 3))


# ---------------------------------------------------------------------------------------------- filters
def bench_filters(n_per_kind: int, figs: list):
    from forge_nb.data.filters import FilterConfig, check_document
    r = random.Random(1)
    cfg, cfg_q = FilterConfig(), FilterConfig(languages=[])
    good = {k: [f(r) for _ in range(n_per_kind)] for k, f in GOOD.items()}
    junk = {k: [f(r) for _ in range(max(10, n_per_kind // 4))] for k, f in JUNK.items()}
    foreign = {k: [doc_foreign(r, k) for _ in range(max(10, n_per_kind // 4))] for k in FOREIGN}
    check_document(good["memo"][0], cfg)                       # build the detector outside the timing
    print("\n## Filters (forge_nb.data.filters.check_document, default FilterConfig)\n")
    print("| kind | documents | dropped | reasons |\n|---|---|---|---|")
    dropped_good = 0
    for group, docs in [*(("keep: " + k, v) for k, v in good.items()), *(("junk: " + k, v) for k, v in junk.items()),
                        *(("language: " + k, v) for k, v in foreign.items())]:
        reasons = [check_document(d, cfg) for d in docs]
        bad = [x for x in reasons if x]
        if group.startswith("keep"): dropped_good += len(bad)
        rs = {x: bad.count(x) for x in sorted(set(bad))}
        print(f"| {group} | {len(docs)} | {len(bad)} | {rs or ''} |")
    all_good = [d for v in good.values() for d in v]
    junk_all = [d for v in junk.values() for d in v] + [d for v in foreign.values() for d in v]
    junk_dropped = sum(check_document(d, cfg) is not None for d in junk_all)
    def rate(c, rounds=3):
        ts = []
        for _ in range(rounds):
            t = time.process_time()
            for d in all_good: check_document(d, c)
            ts.append(time.process_time() - t)
        return len(all_good) / float(np.median(ts))
    full, quality_only = rate(cfg), rate(cfg_q)
    words = np.mean([len(d.split()) for d in all_good])
    print(f"\ncheck_document: {full:,.0f} docs/s with the language check, {quality_only:,.0f} docs/s quality rules only "
          f"(mean {words:.0f} words per document; median of 3 rounds, one core)")
    figs += [figure("filters: kept documents dropped (tables/lists/policies/memos)", dropped_good, "docs", better="lower",
                    note=f"of {len(all_good)}"),
             figure("filters: junk + foreign documents dropped", junk_dropped / len(junk_all), "share", note=f"of {len(junk_all)}"),
             figure("filters: check_document throughput", full, "docs/s", "quality rules only, no language check", quality_only)]


# ---------------------------------------------------------------------------------------------- PII
def luhn_complete(prefix: str, length: int, r) -> str:
    from forge_nb.data.redact import luhn_ok
    body = prefix + "".join(str(r.randrange(10)) for _ in range(length - len(prefix) - 1))
    return next(body + str(c) for c in range(10) if luhn_ok(body + str(c)))

IBAN_SHAPES = {"DE": "n18", "GB": "a4n14", "FR": "n10a11n2", "NL": "a4n10", "ES": "n20", "IT": "a1n10a12", "CH": "n17"}

def make_iban(r) -> str:
    cc = r.choice(list(IBAN_SHAPES))
    shape, bban = IBAN_SHAPES[cc], ""
    for kind, n in ((k, int(n)) for k, n in __import__("re").findall(r"([na])(\d+)", shape)):
        pool = "0123456789" if kind == "n" else "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" if kind == "a" and cc in ("FR",) else "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        bban += "".join(r.choice(pool) for _ in range(n))
    num = int("".join(str(int(c, 36)) for c in bban + cc + "00"))
    iban = f"{cc}{98 - num % 97:02d}{bban}"
    return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4)) if r.random() < 0.6 else iban

def make_phone(r) -> str:
    import phonenumbers as pn
    from phonenumbers import PhoneNumberFormat as F
    while True:
        region = r.choice(["US", "US", "US", "GB", "DE", "FR", "CA"])
        ex = pn.example_number_for_type(region, r.choice([pn.PhoneNumberType.FIXED_LINE, pn.PhoneNumberType.MOBILE]))
        nat = str(ex.national_number)
        cand = nat[:3] + "".join(str(r.randrange(10)) for _ in range(len(nat) - 3)) if region not in ("US", "CA") else \
            str(r.randint(201, 989)) + str(r.randint(200, 999)) + f"{r.randrange(10000):04d}"
        num = pn.parse("+" + str(ex.country_code) + cand)
        if not pn.is_valid_number(num): continue
        if region in ("US", "CA"):
            d = str(num.national_number)
            return r.choice([f"({d[:3]}) {d[3:6]}-{d[6:]}", f"{d[:3]}-{d[3:6]}-{d[6:]}", f"{d[:3]}.{d[3:6]}.{d[6:]}",
                             pn.format_number(num, F.INTERNATIONAL), pn.format_number(num, F.E164)])
        return r.choice([pn.format_number(num, F.INTERNATIONAL), pn.format_number(num, F.E164)])

def make_ipv6(r) -> str:
    import ipaddress
    a = ipaddress.IPv6Address(r.getrandbits(128) if r.random() < 0.5 else (0x20010db8 << 96) | r.getrandbits(16))
    return a.compressed if r.random() < 0.7 else a.exploded

def make_secret(r):
    import string
    al = string.ascii_letters + string.digits
    rnd = lambda n, pool=al: "".join(r.choice(pool) for _ in range(n))
    k = r.randrange(7)
    if k == 0: return "AKIA" + rnd(16, string.ascii_uppercase + string.digits), "aws_access_key_id = {}"
    if k == 1: return "ghp_" + rnd(36), "export GITHUB_TOKEN={}"
    if k == 2: return "hf_" + rnd(34), "HF token: {}"
    if k == 3: return rnd(12) + "!" + rnd(3), "password={}"
    if k == 4: return rnd(32, "0123456789abcdef"), "api_key: {}"
    if k == 5: return "eyJ" + rnd(20) + ".eyJ" + rnd(30) + "." + rnd(43), "Authorization: Bearer {}"
    return ("-----BEGIN PRIVATE KEY-----\n" + "\n".join(rnd(64) for _ in range(4)) + "\n-----END PRIVATE KEY-----"), "key file:\n{}\n"

CONTEXTS = ["Please contact {} before Friday.", "The record lists {} as the primary contact.",
            "Send the signed copy to {} and keep a scan.", "Details: {} (updated last week).", "For questions use {}."]
IP_CONTEXTS = ["The service listens on {} behind the firewall.", "Blocked traffic from {} after the alert.", "Set the gateway to {}."]

def planted(r, n_per_type):
    out = []
    for _ in range(n_per_type):
        first, last = r.choice(["anna", "john", "li", "maria", "omar"]), r.choice(["smith", "garcia", "chen", "muller", "okafor"])
        out.append(("EMAIL", f"{first}.{last}{r.randint(1, 99)}@{r.choice(['gmail.com', 'corp.example.org', 'mail.acme.co.uk', 'uni-x.edu'])}", r.choice(CONTEXTS)))
        card = luhn_complete(r.choice(["4", "51", "55", "2221", "34", "37", "6011"]), 15 if False else 16, r)
        card = luhn_complete(r.choice(["34", "37"]), 15, r) if r.random() < 0.15 else card
        sep = r.choice(["", " ", "-"])
        card_s = sep.join(card[i:i + 4] for i in range(0, len(card), 4))
        out.append(("CARD", card_s, r.choice(["Charge card {} for the renewal.", "The customer paid with {} yesterday.", "Card number: {}"])))
        out.append(("IBAN", make_iban(r), r.choice(["Transfer the refund to {} today.", "IBAN {} belongs to the supplier.", "Account: {}"])))
        ip = r.choice([f"{r.randint(1, 223)}.{r.randrange(256)}.{r.randrange(256)}.{r.randint(1, 254)}", make_ipv6(r)])
        out.append(("IP", ip, r.choice(IP_CONTEXTS)))
        out.append(("PHONE", make_phone(r), r.choice(["Call {} after 5 pm.", "Her mobile is {}.", "Phone: {}", "Reach the desk on {} any time."])))
        val, ctx = make_secret(r)
        out.append(("SECRET", val, ctx))
    return [(kind, val, ctx.format(val)) for kind, val, ctx in out]

def clean_sentences(r, n):
    out = []
    for _ in range(n):
        k = r.randrange(14)
        y, m, d = r.randint(2018, 2026), r.randint(1, 12), r.randint(1, 28)
        if k == 0: s = f"Order #{r.randint(100000, 99999999)} shipped on {y}-{m:02d}-{d:02d}."
        elif k == 1: s = f"Upgrade to version {r.randint(1, 15)}.{r.randint(0, 30)}.{r.randint(0, 99)} before {d:02d}/{m:02d}/{y}."
        elif k == 2: s = f"The invoice INV-{y}-{r.randint(10000, 99999)} totals ${r.randint(10, 99999):,}.{r.randint(0, 99):02d}."
        elif k == 3: s = f"Revenue grew {r.uniform(0, 30):.1f}% to ${r.uniform(1, 900):.1f} million in Q{r.randint(1, 4)} {y}."
        elif k == 4: s = f"The meeting starts at {r.randint(7, 18)}:{r.choice(['00', '15', '30', '45'])} in room {r.randint(100, 999)}."
        elif k == 5: s = f"Build {r.randint(1, 12)}.{r.randint(0, 9)}.{r.randint(10000, 30000)}.{r.randint(100, 9999)} fixed the crash on {r.randint(2, 64)} cores."
        elif k == 6: s = f"Ticket {r.randint(1000, 999999)} was closed after {r.randint(1, 40)} days and {r.randint(2, 90)} comments."
        elif k == 7: s = f"Purchase order {r.choice(['45', '48', '49'])}{r.randint(0, 99999999):08d} covers {r.randint(2, 5000):,} units at €{r.uniform(1, 500):.2f} each."
        elif k == 8: s = f"The warehouse at {r.randint(1, 9999)} {r.choice(['Main', 'Oak', 'Market'])} Street holds {r.randint(10, 100000):,} pallets."
        elif k == 9: s = f"Customer C-{r.randint(10000000, 99999999)} renewed {r.randint(1, 12)} licenses on {d} {r.choice(['March', 'June', 'October'])} {y}."
        elif k == 10: s = f"Set timeout={r.randint(5, 600)} and retries={r.randint(1, 9)} in config v{r.randint(1, 9)}.{r.randint(0, 9)}."
        elif k == 11: s = f"Between {y - 1} and {y} the headcount rose from {r.randint(50, 900)} to {r.randint(900, 5000):,} people."
        elif k == 12: s = f"Account ref {r.randint(10**9, 10**10 - 1)} was archived; see page {r.randint(2, 400)} of the {y} report."
        else: s = f"Shipment {r.randint(10**5, 10**7)}/{r.randint(1, 99)} weighs {r.uniform(1, 900):.1f} kg and costs ${r.randint(5, 900)}.{r.randint(0, 99):02d}."
        out.append(s)
    return out

def bench_pii(n_per_type: int, n_clean: int, figs: list):
    from forge_nb.data.redact import RedactConfig, find_pii, redact
    r = random.Random(2)
    cfg = RedactConfig()
    items = planted(r, n_per_type)
    found = {}
    for kind, val, sent in items:
        i = sent.index(val)
        spans = find_pii(sent, cfg)
        ok = any(s <= i and i + len(val) <= e and k == kind for s, e, k in spans)
        found.setdefault(kind, []).append(ok)
    clean = clean_sentences(r, n_clean)
    fp = [s for s in clean if find_pii(s, cfg)]
    fp_kinds = {}
    for s in fp:
        for _, _, k in find_pii(s, cfg): fp_kinds[k] = fp_kinds.get(k, 0) + 1
    print("\n## PII (forge_nb.data.redact, default RedactConfig)\n")
    print("| type | planted | found | recall |\n|---|---|---|---|")
    for kind, oks in found.items(): print(f"| {kind} | {len(oks)} | {sum(oks)} | {np.mean(oks):.3f} |")
    print(f"\nclean sentences with a false redaction: {len(fp)} / {len(clean)} = {len(fp) / len(clean):.4f} (by type: {fp_kinds})")
    for s in fp[:5]: print("   e.g.", redact(s, cfg)[0])
    # speed: documents of ~2 kB mixing clean and planted sentences
    sents = clean + [s for _, _, s in items]
    r.shuffle(sents)
    docs = [" ".join(sents[i:i + 15]) for i in range(0, len(sents), 15)]
    chars = sum(map(len, docs))
    def rate(fn, rounds=3):
        ts = []
        for _ in range(rounds):
            t = time.process_time()
            for d in docs: fn(d)
            ts.append(time.process_time() - t)
        return chars / float(np.median(ts))
    ours = rate(lambda d: redact(d, cfg))
    base, base_name, p_recall = None, None, None
    try:
        import logging
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
        from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer, IbanRecognizer,
                                                              IpRecognizer, PhoneRecognizer)
        recs = {"EMAIL": EmailRecognizer(), "PHONE": PhoneRecognizer(), "CARD": CreditCardRecognizer(), "IP": IpRecognizer(), "IBAN": IbanRecognizer()}
        def presidio(text): return [(x.start, x.end, k) for k, rec in recs.items() for x in rec.analyze(text, entities=rec.supported_entities, nlp_artifacts=None)]
        presidio("warm up a@b.com")
        p_recall = {}
        for kind, val, sent in items:
            if kind not in recs: continue
            i = sent.index(val)
            p_recall.setdefault(kind, []).append(any(s <= i and i + len(val) <= e and k == kind for s, e, k in presidio(sent)))
        p_hits = [presidio(s) for s in clean]
        p_fp = sum(bool(h) for h in p_hits)
        p_kinds = {}
        for h in p_hits:
            for k in {k for _, _, k in h}: p_kinds[k] = p_kinds.get(k, 0) + 1
        print("\nPresidio pattern recognizers (no NLP engine) on the same sentences: recall "
              + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in p_recall.items())
              + f"; clean sentences with a false redaction {p_fp} / {len(clean)} = {p_fp / len(clean):.4f} (sentences by type: {p_kinds})")
        for h, sent in [(h, s) for h, s in zip(p_hits, clean) if h][:3]: print("   e.g.", sent, "->", [(sent[a:b], k) for a, b, k in h])
        base, base_name = rate(presidio), "Presidio pattern recognizers (EMAIL, PHONE, CARD, IP, IBAN)"
        figs.append(figure("PII: Presidio false redactions on clean sentences", p_fp / len(clean), "share", better="lower"))
    except ImportError:
        print("\n(presidio-analyzer not installed: no same-run comparison)")
    print(f"\nredact: {ours:,.0f} chars/s on one core" + (f"; Presidio pattern recognizers {base:,.0f} chars/s" if base else ""))
    for kind, oks in found.items():
        pr = f"Presidio {np.mean(p_recall[kind]):.3f}" if p_recall and kind in p_recall else ""
        figs.append(figure(f"PII: recall {kind}", float(np.mean(oks)), "share", note=f"{len(oks)} planted; {pr}".rstrip("; ")))
    figs += [figure("PII: clean sentences with a false redaction", len(fp) / len(clean), "share", better="lower", note=f"of {len(clean)}"),
             figure("PII: redact speed (one core)", ours, "chars/s", base_name, base)]


# ---------------------------------------------------------------------------------------------- dedup
def edit_doc(text: str, rate: float, r) -> str:
    w = text.split()
    out = []
    for x in w:
        u = r.random()
        if u < rate / 3: continue                                  # delete
        if u < 2 * rate / 3: out.append(r.choice(NOUNS)); continue  # substitute
        out.append(x)
        if u < rate: out.append(r.choice(ADJS))                    # insert
    return " ".join(out)

def bench_dedup(n_distinct: int, n_pairs: int, figs: list):
    from forge_nb.data.dedup import DedupConfig, minhash_signature, near_duplicate_clusters, shingle_jaccard, shingle_hashes
    r = random.Random(3)
    cfg = DedupConfig()
    docs, group = {}, {}
    for i in range(n_distinct):
        docs[f"d{i:06d}"] = r.choice([doc_memo, doc_policy, doc_list, doc_mixed])(r); group[f"d{i:06d}"] = f"d{i:06d}"
    pairs = []
    for j in range(n_pairs):
        base = f"d{j:06d}"
        rate = r.choice([0.0, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06])
        cid = f"p{j:06d}"
        docs[cid] = edit_doc(docs[base], rate, r); group[cid] = base
        pairs.append((base, cid, shingle_jaccard(docs[base], docs[cid], cfg.ngram)))
    ids = list(docs)
    t = time.process_time()
    sigs = np.stack([minhash_signature(docs[i], cfg) for i in ids])
    t_sig = time.process_time() - t
    t = time.process_time()
    cl = near_duplicate_clusters(ids, sigs, cfg)
    t_cl = time.process_time() - t
    rep = lambda i: cl.get(i, i)
    buckets = [(0.9, 1.01), (0.8, 0.9), (0.7, 0.8), (0.5, 0.7), (0.0, 0.5)]
    print(f"\n## Near duplicates (forge_nb.data.dedup, default DedupConfig: {cfg.bands} bands × {cfg.rows} rows, "
          f"threshold {cfg.threshold}, estimated-Jaccard cut {cfg.cut():.3f})\n")
    print(f"{len(ids)} documents ({n_distinct} distinct, {n_pairs} planted near copies)\n")
    print("| true 5-gram Jaccard | planted pairs | found (same cluster) | recall |\n|---|---|---|---|")
    rec = {}
    for lo, hi in buckets:
        ps = [(a, b) for a, b, j in pairs if lo <= j < hi]
        hit = sum(rep(a) == rep(b) for a, b in ps)
        rec[(lo, hi)] = (hit, len(ps))
        print(f"| [{lo:.1f}, {min(hi, 1.0):.1f}{']' if hi > 1 else ')'} | {len(ps)} | {hit} | {hit / len(ps) if ps else float('nan'):.3f} |")
    hi_pairs = [(a, b) for a, b, j in pairs if j >= 0.8]
    recall80 = sum(rep(a) == rep(b) for a, b in hi_pairs) / max(1, len(hi_pairs))
    removed = [i for i in ids if rep(i) != i]
    false = [i for i in removed if group[i] != group[rep(i)]]
    false_j = [shingle_jaccard(docs[i], docs[rep(i)]) for i in false[:50]]
    precision = 1 - len(false) / max(1, len(removed))
    print(f"\nrecall on pairs with Jaccard >= 0.8: {recall80:.3f} ({len(hi_pairs)} pairs); documents removed {len(removed)}, "
          f"of which clustered with another group's document: {len(false)} (true Jaccard of those: {[round(x, 2) for x in false_j]}); "
          f"precision {precision:.4f}")
    per_doc = t_sig / len(ids)
    print(f"signatures: {len(ids) / t_sig:,.0f} docs/s ({per_doc * 1e3:.2f} ms/doc, mean {np.mean([len(d.split()) for d in docs.values()]):.0f} words); "
          f"clustering {len(ids)} documents: {t_cl:.2f} s; signature size {sigs.nbytes / len(ids):.0f} bytes/doc")
    n_big = 50_000 if len(ids) < 3000 else 300_000
    big = np.random.default_rng(0).integers(0, 2**32, size=(n_big, cfg.num_perm), dtype=np.uint32)
    big[1::1000] = big[0::1000][:len(big[1::1000])]                # a planted exact copy every 1000 rows
    t = time.process_time()
    cl_big = near_duplicate_clusters([f"s{i:07d}" for i in range(n_big)], big, cfg)
    t_big = time.process_time() - t
    print(f"clustering {n_big:,} random signatures ({big.nbytes / 1e6:.0f} MB) with {len(big[1::1000])} planted copies: "
          f"{t_big:.1f} s CPU, {len(cl_big) // 2} clusters found")
    figs.append(figure(f"dedup: clustering {n_big:,} signatures", t_big, "s", better="lower", note=f"{len(cl_big) // 2} of {len(big[1::1000])} planted copies found"))
    base = None
    try:
        from datasketch import MinHash
        sample = ids[:min(len(ids), 400)]
        t = time.process_time()
        for i in sample:
            m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
            m.update_batch([s.tobytes() for s in shingle_hashes(docs[i], cfg.ngram)])
        t_ds = time.process_time() - t
        t = time.process_time()
        for i in sample: minhash_signature(docs[i], cfg)
        t_ours = time.process_time() - t
        base = len(sample) / t_ds
        ours = len(sample) / t_ours
        print(f"same {len(sample)} documents: forge_nb {ours:,.0f} docs/s, datasketch MinHash.update_batch {base:,.0f} docs/s "
              f"(datasketch given our shingle hashes as bytes, so its word tokenizing is not counted)")
    except ImportError:
        ours = len(ids) / t_sig
        print("(datasketch not installed: no same-run comparison)")
    figs += [figure("dedup: recall on pairs with 5-gram Jaccard >= 0.8", recall80, "share", note=f"{len(hi_pairs)} pairs"),
             figure("dedup: recall on pairs with Jaccard in [0.8, 0.9)", rec[(0.8, 0.9)][0] / max(1, rec[(0.8, 0.9)][1]), "share", note=f"{rec[(0.8, 0.9)][1]} pairs"),
             figure("dedup: precision (removed docs that belong with their representative)", precision, "share", note=f"{len(false)} false of {len(removed)} removed"),
             figure("dedup: signature speed (one core)", ours, "docs/s", "datasketch MinHash" if base else None, base),
             figure("dedup: clustering time", t_cl, "s", better="lower", note=f"{len(ids)} documents")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sets (a smoke figure, not the reported one)")
    a = ap.parse_args(argv)
    import torch
    print(f"cpu capability: {torch.backends.cpu.get_cpu_capability()}; cores: {os.cpu_count()}; load average at start: {os.getloadavg()[0]:.1f}")
    figs = []
    t0 = time.perf_counter()
    bench_filters(40 if a.quick else 200, figs)
    bench_pii(60 if a.quick else 300, 500 if a.quick else 3000, figs)
    bench_dedup(600 if a.quick else 3000, 150 if a.quick else 600, figs)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s wall; load average at end {os.getloadavg()[0]:.1f}")
    emit("curate text", figs, quick=a.quick)


if __name__ == "__main__":
    main()
