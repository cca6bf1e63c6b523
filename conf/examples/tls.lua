-- moonring with TLS: an HTTPS listener (SNI, mTLS on a second port), an https:// upstream.
-- Needs certificates; make throwaway ones next to this file with:
--   cd conf/examples && mkdir -p certs && cd certs &&
--   openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
--     -keyout ca.key -out ca.pem -subj '/CN=demo CA' -addext basicConstraints=critical,CA:TRUE &&
--   openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout site.key -out site.csr \
--     -subj '/CN=localhost' &&
--   printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > site.ext &&
--   openssl x509 -req -in site.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile site.ext -out site.pem
-- then: build/moonring -c conf/examples/tls.lua
--   curl --cacert conf/examples/certs/ca.pem https://localhost:8443/hello
--   curl --cacert conf/examples/certs/ca.pem https://localhost:8443/self/hello   (through the https:// upstream)
-- Paths are relative to this file.
return {
  workers = 2,
  error_log = "stderr",
  log_level = "info",
  listen = {
    { addr = "127.0.0.1:8443", name = "https",
      tls = {
        certs = { { cert = "certs/site.pem", key = "certs/site.key" } },  -- certs[1] is the default
        protocols = { "TLSv1.2", "TLSv1.3" },
        session_tickets = true,
        ticket_rotation = "12h",
      } },
    -- mTLS: clients need a certificate issued by certs/ca.pem (add client_verify = "optional"
    -- to make it optional; req.tls.client_subject says who it was).
    { addr = "127.0.0.1:8444", name = "mtls",
      tls = { cert = "certs/site.pem", key = "certs/site.key",
              client_verify = "require", client_ca = "certs/ca.pem" } },
  },
  upstreams = {
    -- This server's own HTTPS listener, verified against the demo CA.
    self = { servers = { "https://127.0.0.1:8443" }, tls = { ca = "certs/ca.pem", sni = "localhost" } },
  },
  routes = {
    { path = "/hello", handler = function(req)
        local t = req.tls
        return 200, ("hello over %s (%s, %s, sni %s, resumed %s, client %s)\n"):format(
          req.scheme, t and t.protocol, t and t.cipher, t and t.sni, t and t.session_reused,
          t and t.client_subject)
      end },
    { path = "/self/", upstream = "self", strip_prefix = true },
  },
}
