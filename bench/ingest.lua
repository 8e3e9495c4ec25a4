-- wrk script for bench/ingest.py: every request is a signed delivery with its own X-GitHub-Delivery.
-- Arguments: <deliveries file> <event> <delivery id prefix>
-- The deliveries file holds one "<signature>\t<compact JSON body>" per line; requests take them in turn.
local counter = 0
local deliveries = {}

function init(args)
  for line in io.lines(args[1]) do
    local signature, body = line:match("^(%S+)\t(.*)$")
    table.insert(deliveries, {signature = signature, body = body})
  end
  event = args[2]
  prefix = args[3]
end

function request()
  counter = counter + 1
  local delivery = deliveries[(counter % #deliveries) + 1]
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = event,
    ["X-GitHub-Delivery"] = prefix .. "-" .. counter,
    ["X-Hub-Signature-256"] = delivery.signature,
    ["User-Agent"] = "GitHub-Hookshot/bench",
  }
  return wrk.format("POST", "/webhook", headers, delivery.body)
end
