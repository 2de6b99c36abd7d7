-- The id bookkeeping of the learner's commit, run inside its MULTI/EXEC with the model
-- snapshot and the acknowledgements (Learner.publish): one command however many ids, so
-- the per-id work is Redis's, not the learner's.
--
-- KEYS[1]: the awaiting set; KEYS[2..]: the learned markers to set.
-- ARGV[1]: the markers' TTL in seconds; ARGV[2..]: the ids that leave the awaiting set.
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], '1', 'EX', ARGV[1])
end
-- unpack() is limited by Lua's stack: remove the ids a thousand at a time.
for i = 2, #ARGV, 1000 do
  redis.call('ZREM', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return #KEYS - 1
