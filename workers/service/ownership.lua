-- Take ownership of a query id's decision record, or say who holds it (workers/service/ownership.py).
-- KEYS[1]: the decision record.
-- ARGV[1]: the queries-stream entry id, ARGV[2]: this router's consumer name,
-- ARGV[3]: the record's TTL in seconds, ARGV[4..]: the new record's fields and values.
-- Returns {'new'} or {'retake'} when this router now owns the id (the record is written),
-- {'answered', response, entry} when the id has been answered, and otherwise
-- {'pending', entry, owner, arm_name, prob, model_version, explored}.
local cur = redis.call('HMGET', KEYS[1], 'entry', 'owner', 'response', 'abandoned',
                       'arm_name', 'prob', 'model_version', 'explored')
local exists = redis.call('EXISTS', KEYS[1]) == 1
if exists and cur[3] then
  return {'answered', cur[3], cur[1] or ''}
end
-- A call abandoned cleanly at a shutdown deadline never returned: the entry it came from
-- may take the id over again (another entry with the same id may not).
local retake = exists and cur[1] == ARGV[1] and cur[4] == '1'
-- The same entry and router process again (owner = consumer/process token): a write whose
-- reply was lost with Redis is re-sent. A router restarted under the same name is another
-- process: its predecessor's record stays the predecessor's.
local again = exists and cur[1] == ARGV[1] and cur[2] == ARGV[2]
if exists and not retake and not again then
  return {'pending', cur[1] or '', cur[2] or '', cur[5] or '', cur[6] or '', cur[7] or '', cur[8] or ''}
end
if retake then
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'entry', ARGV[1], 'owner', ARGV[2], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[3])
if retake then
  return {'retake'}
end
return {'new'}
