import os, time, signal
from tests.e2e.helpers import *
from tests.pg import fetch

def test_probe_slow(dsn, workdir, watchers):
    w = watchers.start(dsn, workdir)
    imports = workdir / "imports"
    content = meter_csv(800, meters=4)
    chunks = [content[i:i+len(content)//6+1] for i in range(0, len(content), len(content)//6+1)]
    with open(imports / "meter_readings_slow.csv", "wb") as f:
        for c in chunks:
            f.write(c); f.flush(); os.fsync(f.fileno())
            time.sleep(1.0)
    time.sleep(2)
    print(fetch(dsn, "select id,name,status,rows_loaded from ingest.files"))
    w.stop()
    print(w.output)
    assert 0
