// The token and the REST calls.

const TOKEN_KEY = "recap-status.token";

/**
 * The token from `?token=` (taken once, kept in sessionStorage and removed from
 * the address bar, so it is not bookmarked, shared or left in history), else
 * the one this tab stored earlier.
 */
export function takeToken() {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

export function storeToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function createApi(getToken) {
  async function get(path, params = {}) {
    const url = new URL(path, location.origin);
    for (const [name, value] of Object.entries(params)) {
      if (value != null && value !== "") url.searchParams.set(name, String(value));
    }
    let response;
    try {
      response = await fetch(url, { headers: { Authorization: `Bearer ${getToken()}` }, cache: "no-store" });
    } catch (err) {
      throw new ApiError(0, "the server cannot be reached");
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      throw new ApiError(response.status, body?.error?.message || `HTTP ${response.status}`);
    }
    return body;
  }

  return {
    progress: (filters) => get("/v1/dashboard/job-progress", filters),
    stats: (params) => get("/v1/dashboard/job-stats", params),
    job: (id) => get(`/v1/dashboard/jobs/${encodeURIComponent(id)}`, { events: 0 }),
    deadLetters: (limit) => get("/v1/dashboard/dead-letters", { limit }),
    me: () => get("/v1/me"),
  };
}
