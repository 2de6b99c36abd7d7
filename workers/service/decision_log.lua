-- Append a commit's joined decisions to the decision log, one stream entry each (one field,
-- 'd': the decision as JSON), trimmed exactly to its length, in one command for the whole
-- commit: one XADD per decision, packed and its reply parsed, cost the learner a third of
-- its throughput.
-- KEYS[1] = the log stream; ARGV[1] = its length; ARGV[2..] = the decisions (JSON).
local maxlen = ARGV[1]
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', maxlen, '*', 'd', ARGV[i])
end
return #ARGV - 1
