# Writes schema3.db: a file of schema version 3 (before retention), made with the
# migration SQL of chat-core/src/runtime/sqlite.rs at the commit before version 4 (saved
# to /tmp/lc_old_sqlite.rs with git show) and rows as its INSERT and apply_change write them.
# Run from the repository root: python3 chat-core/tests/data/make-schema3.py
import re, sqlite3, os
src=open('/tmp/lc_old_sqlite.rs').read()
block=src[src.index('const MIGRATIONS: &[&str] = &['):src.index('];',src.index('const MIGRATIONS'))]
migs=re.findall(r'"\n(.*?)",', block, re.S)
assert len(migs)==3, len(migs)
path='chat-core/tests/data/schema3.db'
c=sqlite3.connect(path)
c.isolation_level=None
c.execute('PRAGMA journal_mode=WAL')
c.execute('BEGIN IMMEDIATE')
for i,m in enumerate(migs):
    for stmt in [s.strip() for s in m.split(';') if s.strip()]:
        c.execute(stmt)
    if i==0:
        c.execute("INSERT INTO meta (key, value) VALUES ('epoch', '3333feed3333feed')")
c.execute('PRAGMA user_version = 3')
ins="INSERT INTO messages (room, seq, ts, user, body, client_id, kind, target, extra, reply_to) VALUES (?,?,?,?,?,?,?,?,?,?)"
t=1_765_000_000_000
rows=[
 ('general',1,t+1,'alice','hello from schema 3','c-1',None,None,None,None),
 ('general',2,t+2,'bob','hi alice',None,None,None,None,1),
 ('general',3,t+3,'alice','hello from schema 3 (edited)',None,'edit',1,None,None),
 ('general',4,t+4,'bob','',None,'react',1,'{"emoji":"👍","on":true}',None),
 ('general',5,t+5,'bob','third',None,None,None,None,None),
 ('@alice,bob',1,t+6,'alice','psst',None,None,None,None,None),
]
for r in rows: c.execute(ins,r)
c.execute("UPDATE messages SET body=?, edited_at=?, deleted=0, reactions=?, rev=? WHERE room='general' AND seq=1",
          ('hello from schema 3 (edited)', t+3, '[{"emoji":"👍","users":["bob"]}]', 4))
c.execute("INSERT INTO room_settings (room, topic, slow_mode) VALUES ('general','schema 3',0)")
c.execute("INSERT INTO read_markers (user, room, seq) VALUES ('bob','general',2)")
c.execute('COMMIT')
c.execute('PRAGMA wal_checkpoint(TRUNCATE)')
c.close()
for f in [path+'-wal', path+'-shm']:
    if os.path.exists(f): os.remove(f)
print(os.path.getsize(path))
