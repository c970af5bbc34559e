-- Issue #13: the HTTP version poolgate speaks to a backend's upstream. `auto` (what every
-- backend did before: HTTP/1.1 on http://, ALPN on https://), `http1`, or `http2` (prior
-- knowledge on http://, ALPN h2 on https://: many streams share one upstream connection).
ALTER TABLE backends ADD COLUMN http_version TEXT NOT NULL DEFAULT 'auto'
    CHECK (http_version IN ('auto', 'http1', 'http2'));
