-- GET /healthz: no database, no body. What the API costs per connection and per request
-- without the pool (bench/README.md: memory at 1,000 connections).
-- usage: wrk ... -s bench/healthz.lua URL
local common = require("common")

local request_text

function setup(thread)
  common.setup(thread)
end

function init(args)
  request_text = wrk.format("GET", "/healthz")
end

function request()
  return request_text
end

done = common.done
