-- The learner's join: each query id's decision record and whether its learned:{id} marker
-- is set, read together in one round trip. It only reads: markers are set, and ids leave
-- the awaiting set, in the learner's commit (Learner.publish), with the model they describe.
--
-- KEYS: per id, its decision record, then its learned marker.
-- ARGV: the record fields to read.
-- Reply: per id {1 if the marker is set else 0, the fields' values (false when missing)}.
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = {redis.call('EXISTS', KEYS[i + 1]), redis.call('HMGET', KEYS[i], unpack(ARGV))}
end
return out
