-- moonring demo: works with nothing else running.
--   curl http://127.0.0.1:8080/hello        answered by a Lua handler
--   curl http://127.0.0.1:8080/api/hello    proxied to the second listener (port 8081) with
--                                           Host: backend.local, whose Lua handler plays the upstream
return {
  workers = 2,
  pid = "moonring.pid",
  error_log = "stderr",
  log_level = "info",
  access_log = "stdout",
  listen = { "127.0.0.1:8080", "127.0.0.1:8081" },
  upstreams = {
    backend = { servers = { "127.0.0.1:8081" }, keepalive = 32 },
  },
  routes = {
    -- The /api/ route below forwards with Host: backend.local; this route plays the origin.
    { host = "backend.local", handler = function(req)
        return 200, "backend saw " .. req.method .. " " .. req.path .. " from " .. req.remote_addr .. "\n",
               { ["content-type"] = "text/plain" }
      end },
    { path = "/hello", handler = function(req)
        local name = req:arg("name") or "world"
        return 200, "hello, " .. name .. ", from moonring\n"
      end },
    { path = "/api/", upstream = "backend", strip_prefix = true, set_host = "backend.local" },
    { path = "/", handler = function(req)
        return 200, "moonring demo: try /hello?name=you or /api/anything\n"
      end },
  },
}
