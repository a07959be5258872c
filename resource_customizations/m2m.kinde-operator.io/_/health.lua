-- Argo CD health check for kinde-m2m-operator's kinds (group m2m.kinde-operator.io:
-- ApiRegistration, M2MApplication, ApiGrant), one script for all three since they share
-- their conditions.
--
-- The status is kstatus-compliant
-- (https://github.com/kubernetes-sigs/cli-utils/tree/master/pkg/kstatus): it has
-- status.observedGeneration, and conditions Ready and Synced plus Reconciling and Stalled,
-- which the operator derives from Ready's reason (its README, "Conditions and what to do
-- about them", lists which reasons stall; src/conditions.rs `progress` decides it).
-- Argo CD runs this without Lua's string library: only comparisons and `..` below.

local function condition(conditions, type)
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function holds(c)
  return c ~= nil and c.status == "True"
end

local function says(c)
  return c.reason .. ": " .. c.message
end

local hs = {}
local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile the " .. obj.kind
  return hs
end

-- As kstatus: a spec the operator has not acted on yet says nothing about health.
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on generation " .. generation
  return hs
end

local conditions = status.conditions
local ready = condition(conditions, "Ready")
local synced = condition(conditions, "Synced")

-- The paused annotation as the operator read it: Synced=False with reason Paused.
if synced ~= nil and synced.status == "False" and synced.reason == "Paused" then
  hs.status = "Suspended"
  hs.message = synced.message
  return hs
end

-- kstatus's pair: at most one holds, and only while Ready is False.
for _, rule in ipairs({ { "Stalled", "Degraded" }, { "Reconciling", "Progressing" } }) do
  local c = condition(conditions, rule[1])
  if holds(c) then
    hs.status = rule[2]
    hs.message = says(c)
    return hs
  end
end

if holds(ready) then
  hs.status = "Healthy"
  hs.message = ready.message
  -- Ready stays True while Kinde fails for an object that works: say so.
  if synced ~= nil and synced.status == "False" then
    hs.message = ready.message .. "; last reconcile failed: " .. says(synced)
  end
  return hs
end

-- Ready=False without Reconciling/Stalled (written by an operator older than them), or no
-- Ready yet: kstatus reads this as in progress too.
hs.status = "Progressing"
if ready ~= nil then
  hs.message = says(ready)
else
  hs.message = "Waiting for the operator to reconcile the " .. obj.kind
end
return hs
