-- wrk script: one PUT of a 100-byte value per request, to namespace "bench", keys k0..k99999
-- in turn (the value base64 in JSON, as the write bench sends it). Against ferry or against
-- `cargo bench --bench write -- --serve-floor whole|hop`, one connection:
--   wrk -t1 -c1 -d4s -s benches/wrk/put.lua http://127.0.0.1:PORT/
local value = string.rep("eHh4", 33) .. "eA=="
local body = '{"value":"' .. value .. '"}'
local headers = { ["content-type"] = "application/json" }
local counter = 0

request = function()
  counter = counter + 1
  return wrk.format("PUT", "/api/v1/bench/kv/k" .. (counter % 100000), headers, body)
end
