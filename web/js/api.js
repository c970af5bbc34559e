// The admin API client: every call carries the admin token from session storage; errors arrive in
// OpenAI's shape `{"error": {"message", "type", "param", "code"}}` and become `ApiError`s.

const TOKEN_KEY = 'poolgate.adminToken';

export class ApiError extends Error {
  constructor(status, message, { param = null, code = null, type = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.param = param;
    this.code = code;
    this.type = type;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** Listeners told when the API refuses the stored token (the session ends). */
const unauthorizedListeners = new Set();
export function onUnauthorized(listener) {
  unauthorizedListeners.add(listener);
}

/**
 * Calls `/admin/api{path}`. `query` values that are null/undefined/'' are left out.
 * `token` overrides the stored token (the login form checks a candidate this way).
 */
export async function api(method, path, { body, query, token } = {}) {
  const url = new URL(`/admin/api${path}`, window.location.origin);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== '') url.searchParams.set(key, String(value));
  }
  const headers = { Accept: 'application/json' };
  const bearer = token ?? getToken();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (error) {
    throw new ApiError(0, `Cannot reach poolgate (${error.message}). Is the gateway running?`);
  }
  if (response.status === 204) return null;
  let payload = null;
  const text = await response.text();
  if (text) {
    try {
      payload = JSON.parse(text);
    } catch {
      payload = null;
    }
  }
  if (!response.ok) {
    const detail = payload && payload.error ? payload.error : {};
    const error = new ApiError(
      response.status,
      detail.message || `${response.status} ${response.statusText}`.trim(),
      { param: detail.param ?? null, code: detail.code ?? null, type: detail.type ?? null },
    );
    if (response.status === 401 && token === undefined) {
      for (const listener of unauthorizedListeners) listener(error);
    }
    throw error;
  }
  return payload;
}

export const get = (path, query) => api('GET', path, { query });
export const post = (path, body) => api('POST', path, { body: body ?? {} });
export const patch = (path, body) => api('PATCH', path, { body });
export const del = (path) => api('DELETE', path);
