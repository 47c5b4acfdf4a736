// The browser's storage: one IndexedDB object store of string keys, read by
// prefix. It holds the identity (non-extractable CryptoKeys), pinned keys,
// group keys, history, the outbox and the ids of content already shown.

const DB = "socp";
let dbp = null;

function db() {
  if (!dbp) {
    dbp = new Promise((resolve, reject) => {
      const req = indexedDB.open(DB, 1);
      req.onupgradeneeded = () => req.result.createObjectStore("kv");
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }
  return dbp;
}

async function run(mode, fn) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction("kv", mode);
    const out = fn(tx.objectStore("kv"));
    tx.oncomplete = () => resolve(out && "result" in out ? out.result : undefined);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

export const get = (key) => run("readonly", (s) => s.get(key));
export const put = (key, value) => run("readwrite", (s) => s.put(value, key));
export const del = (key) => run("readwrite", (s) => s.delete(key));

/** Every [key, value] whose key starts with `prefix`, in key order. */
export async function prefix(p) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const out = [];
    const tx = d.transaction("kv", "readonly");
    const range = IDBKeyRange.bound(p, p + "\uffff");
    const req = tx.objectStore("kv").openCursor(range);
    req.onsuccess = () => {
      const c = req.result;
      if (c) {
        out.push([c.key, c.value]);
        c.continue();
      } else resolve(out);
    };
    req.onerror = () => reject(req.error);
  });
}
