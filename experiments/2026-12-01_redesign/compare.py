"""Compare the spot-check outputs of two code versions (issue 16 'same behaviour')."""
import json, sys, hashlib
from pathlib import Path
a, b = Path(sys.argv[1]), Path(sys.argv[2])
def load(p): return json.load(open(p))
rows = []
ta, tb = load(a/'train/metrics.json')['metrics'], load(b/'train/metrics.json')['metrics']
keys = [k for k in ta if 'seconds' not in k]
rows.append(('train metrics.json (non-timing keys)', all(ta[k] == tb.get(k) for k in keys), len(keys)))
for run in ('eval', 'eval_val'):
    ma, mb = load(a/run/'metrics.json'), load(b/run/'metrics.json')
    same = ma['metrics'] == mb['metrics'] and ma['counts'] == mb['counts']
    rows.append((f'{run} metrics + confusion counts', same, ma['metrics']['fg_iou']))
ca, cb = load(a/'model.json'), load(b/'model.json')
for c in (ca, cb):
    c['model'].pop('source_checkpoint')
rows.append(('model.json (ONNX card; sha256 of the .onnx included)', ca == cb, ca['sha256'][:12]))
if ca != cb:
    print({k: (ca[k], cb.get(k)) for k in ca if ca[k] != cb.get(k)})
for f in ('probs.tif', 'mask.tif'):
    ha = hashlib.sha256((a/f).read_bytes()).hexdigest(); hb = hashlib.sha256((b/f).read_bytes()).hexdigest()
    rows.append((f, ha == hb, ha[:12]))
for r in rows: print(*r, sep=' | ')
