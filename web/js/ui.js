// The page: what the engine reports, drawn with textContent only (never
// innerHTML: every name, message and file name comes from a peer).

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

const STATES = { queued: "queued", sent: "sent", delivered: "delivered", failed: "failed" };

export class Ui {
  constructor() {
    this.rows = new Map();
    this.groups = new Map();
    this.onAccept = () => {};
  }

  status(text) {
    $("status").textContent = text;
  }

  connected(yes) {
    // Sending stays possible offline: the outbox keeps it until reconnected.
    $("status").dataset.connected = yes ? "yes" : "no";
  }

  online(users) {
    // Redrawn only when it changed: a redraw would take the keyboard
    // focus away from a name in the list.
    if (this.users && users.join("\n") === this.users.join("\n")) return;
    const list = $("online");
    list.replaceChildren(
      ...users.map((u) => {
        const li = el("li");
        const b = el("button", u);
        b.type = "button";
        b.addEventListener("click", () => {
          $("to").value = u;
          $("message").focus();
        });
        li.append(b);
        return li;
      }),
    );
    this.peers(users);
  }

  peers(users) {
    this.users = users || this.users || [];
    $("peers").replaceChildren(...[...this.users, ...this.groups.keys()].map((u) => {
      const o = document.createElement("option");
      o.value = u;
      return o;
    }));
  }

  /** A group we hold a key for (`members` null: we no longer do). */
  group(id, members) {
    if (members) this.groups.set(id, members);
    else this.groups.delete(id);
    $("groups").replaceChildren(
      ...[...this.groups].map(([g, m]) => {
        const li = el("li");
        const b = el("button", g);
        b.type = "button";
        b.title = `members: ${m.join(", ")}`;
        b.addEventListener("click", () => {
          $("to").value = g;
          $("message").focus();
        });
        li.append(b, el("span", m.join(", "), "members"));
        return li;
      }),
    );
    this.peers();
  }

  /** Adds or updates one message line: "from → peer: text [state]". */
  message(rec) {
    if (!rec) return;
    let li = this.rows.get(rec.id);
    if (!li) {
      li = el("li");
      li.className = rec.dir;
      this.rows.set(rec.id, li);
      const log = $("log");
      log.append(li);
      $("messages").scrollTop = $("messages").scrollHeight;
    }
    const where = rec.dir === "out" || rec.peer !== rec.from ? ` → ${rec.peer}` : "";
    const parts = [el("span", `${rec.from}${where}: ${rec.text}`, "text")];
    if (rec.dir === "out") parts.push(el("span", STATES[rec.state] || rec.state, "state"));
    if (rec.detail) parts.push(el("span", rec.detail, "state"));
    if (rec.dir === "in" && !rec.verified) parts.push(el("span", "unverified: the signature does not check with the sender's pinned key", "unverified"));
    if (rec.link) parts.push(rec.link);
    li.dataset.state = rec.state || "";
    li.replaceChildren(...parts);
  }

  download(rec, blob) {
    const a = el("a", `Download ${rec.file.name}`);
    a.href = URL.createObjectURL(blob);
    a.download = rec.file.name;
    a.className = "download";
    rec.link = a;
    this.message(rec);
  }

  progress(id, label, done, total) {
    const p = $("fileprogress");
    p.hidden = done >= total;
    p.max = total || 1;
    p.value = done;
    $("filestatus").textContent = done >= total ? "" : `${label}: ${done} of ${total} bytes`;
  }

  keyChanged(user, oldFp, newFp) {
    const box = el("div");
    box.append(
      el("p", `WARNING: ${user}'s key has changed. Sending to ${user} is blocked until you accept the new key. Compare the fingerprint with ${user} in person first.`),
      el("p", `pinned: ${oldFp}`),
      el("p", `new: ${newFp}`),
    );
    const b = el("button", `Accept new key for ${user}`);
    b.type = "button";
    b.addEventListener("click", async () => {
      if (await this.onAccept(user)) box.remove();
    });
    box.append(b);
    $("warnings").append(box);
  }

  error(text) {
    const li = el("li", text);
    $("errors").prepend(li);
    while ($("errors").children.length > 20) $("errors").lastChild.remove();
  }

  notice(text) {
    this.error(text);
  }
}
