import redis, json, orjson, sys, numpy as np
r=redis.Redis()
P='{%s}' % sys.argv[1]
truth={}
for l in open('bench/out/flood-overload-truth.jsonl'):
    x=json.loads(l); truth[x['id']]=x
keys=[f"{P}:t:{t}" for t in truth]
pipe=r.pipeline(transaction=False)
for k in keys: pipe.hgetall(k)
lane_enrich=[]; lane_wait=[]; emb=[]
seen=set()
for h in pipe.execute():
    h={a.decode():b.decode() for a,b in h.items()}
    e=orjson.loads(h['enrich'])
    if e.get('ingest_lane')=='urgent' and e.get('batch',99)<=8:
        rec=int(h['received_at'])
        lane_wait.append(int(h['t_enrich_start'])-rec)
        key=(h['t_enrich_start'], e.get('batch'))
        if key in seen: continue
        seen.add(key)
        lane_enrich.append(int(h['t_enrich'])-int(h['t_enrich_start'])); emb.append(e['steps_ms']['embed'])
pc=lambda a,q: round(float(np.percentile(a,q)),1)
print(sys.argv[1], "lane batches", len(lane_enrich), "enrich ms p50/p90/max", pc(lane_enrich,50), pc(lane_enrich,90), max(lane_enrich), "embed ms p50/p90", pc(emb,50), pc(emb,90), "| lane tickets", len(lane_wait), "wait before enrich p50/p90/max", pc(lane_wait,50), pc(lane_wait,90), max(lane_wait))
