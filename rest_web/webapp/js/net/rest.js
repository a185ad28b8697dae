// The REST API as it is on main (rest_web/app.py, rest_web/files.py): register, login, logout,
// friends, file upload and download. Same origin as the page, so no CORS. Endpoints the server
// does not have yet live in upcoming.js, not here.

export class RestError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.name = "RestError";
    this.status = status;
    this.detail = detail;
  }
}

async function detailOf(resp) {
  try {
    const data = await resp.json();
    if (typeof data.detail === "string") return data.detail;
    if (Array.isArray(data.detail)) return data.detail.map((d) => d.msg).join("; ");
  } catch {
    // not JSON
  }
  return resp.statusText;
}

export class Rest {
  constructor(base = "") {
    this.base = base;
    this.token = null;
  }

  headers(extra = {}) {
    const h = { ...extra };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    return h;
  }

  // fetch + status check; JSON (or null for 204) on success, RestError otherwise
  async call(method, path, { json, ok = [200], raw = false } = {}) {
    const init = { method, headers: this.headers() };
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    }
    let resp;
    try {
      resp = await fetch(this.base + path, init);
    } catch (err) {
      throw new RestError(0, `the server cannot be reached (${err.message})`);
    }
    if (!ok.includes(resp.status)) throw new RestError(resp.status, await detailOf(resp));
    if (raw) return resp;
    if (resp.status === 204) return null;
    const text = await resp.text();
    return text ? { status: resp.status, ...JSON.parse(text) } : { status: resp.status };
  }

  register(userId, password, displayName) {
    return this.call("POST", "/users", {
      json: { user_id: userId, password, display_name: displayName || null },
      ok: [201],
    });
  }

  async login(userId, password, deviceId) {
    const answer = await this.call("POST", "/login", {
      json: { user_id: userId, password, device_id: deviceId },
    });
    this.token = answer.token;
    return answer;
  }

  async logout() {
    try {
      await this.call("POST", "/logout", { ok: [204, 401] });
    } finally {
      this.token = null;
    }
  }

  async friends() {
    const r = await this.call("GET", "/friends", { raw: true });
    return r.json();
  }

  // A friendship request (202, issue 12) or, on a server without consent yet, the friendship
  // itself (200 with the key). {status, user_id, key?}
  addFriend(userId) {
    return this.call("PUT", `/friends/${encodeURIComponent(userId)}`, { ok: [200, 202] });
  }

  // Withdraw, decline or unfriend.
  removeFriend(userId) {
    return this.call("DELETE", `/friends/${encodeURIComponent(userId)}`, { ok: [204, 404] });
  }

  // POST /files with upload progress: XHR, since fetch reports none for request bodies.
  upload(blob, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", `${this.base}/files`);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      if (this.token) xhr.setRequestHeader("Authorization", `Bearer ${this.token}`);
      xhr.responseType = "json";
      xhr.upload.onprogress = (ev) => onProgress?.(ev.loaded, blob.size);
      xhr.onerror = () => reject(new RestError(0, "the upload was cut off (over the size limit?)"));
      xhr.onload = () => {
        if (xhr.status === 201) resolve(xhr.response);
        else reject(new RestError(xhr.status, xhr.response?.detail ?? xhr.statusText));
      };
      xhr.send(blob);
    });
  }

  // GET /files/{id}: the Response, for streaming.
  download(fileId) {
    return this.call("GET", `/files/${encodeURIComponent(fileId)}`, { raw: true });
  }
}
