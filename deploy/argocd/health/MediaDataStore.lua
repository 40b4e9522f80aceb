-- Argo CD health check of studiodrive.dev/MediaDataStore (resource.customizations.health.
-- studiodrive.dev_MediaDataStore in argocd-cm; deploy/argocd/README.md). Lua 5.1, as Argo
-- CD's gopher-lua runs it; `obj` is the live object.
--
-- Progressing: no status yet, status.observedGeneration (or Ready's) behind
--   metadata.generation, Progressing=True, Ready absent or Unknown, or Ready=False while the
--   DataStore is being recorded (Creating).
-- Degraded: Degraded=True (the metadata store cannot be reached), or Ready=False because
--   the store refused the new schema (SchemaRefused: a stored document fails it; the stored
--   DataStore keeps its previous schema), the media id schema differs from the stored one
--   (MediaIdSchemaImmutable), the spec is invalid (InvalidSpec), or the store refused the
--   change for another reason (StoreError, StoreUnavailable). Someone has to change the
--   spec (or the documents): no sync fixes it by itself.
-- Healthy: Ready=True (Accepted) for the current generation.

-- BEGIN common: identical in every deploy/argocd/health/*.lua (tests/argocd checks it)
local function condition(conditions, type_)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local function health(status, message)
  return { status = status, message = message }
end

-- Progressing until the operator has written a status for the current spec or while it says
-- Progressing=True, Degraded on Degraded=True; else nil, and the kind's rules look at Ready.
local function stale_or_degraded(o)
  if o.status == nil then
    return health("Progressing", "Waiting for the operator to write a status")
  end
  local generation = o.metadata and o.metadata.generation
  local observed = o.status.observedGeneration
  if generation ~= nil and (observed == nil or observed < generation) then
    return health("Progressing", "Waiting for the operator to observe generation " .. tostring(generation))
  end
  local degraded = condition(o.status.conditions, "Degraded")
  if degraded ~= nil and degraded.status == "True" then
    return health("Degraded", describe(degraded))
  end
  local progressing = condition(o.status.conditions, "Progressing")
  if progressing ~= nil and progressing.status == "True" then
    return health("Progressing", describe(progressing))
  end
  local ready = condition(o.status.conditions, "Ready")
  if ready == nil or ready.status == "Unknown" then
    return health("Progressing", "Waiting for the Ready condition")
  end
  if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
    return health("Progressing", "Waiting for the operator to observe generation " .. tostring(generation))
  end
  return nil
end

-- Ready=True is Healthy; Ready=False is Degraded when its reason is in `failures`, else
-- Progressing (creating, or waiting for something that may still appear).
local function from_ready(o, failures)
  local ready = condition(o.status.conditions, "Ready")
  if ready.status == "True" then
    return health("Healthy", describe(ready))
  end
  if failures[ready.reason] then
    return health("Degraded", describe(ready))
  end
  return health("Progressing", describe(ready))
end
-- END common

local failures = {
  InvalidSpec = true,
  SchemaRefused = true,
  MediaIdSchemaImmutable = true,
  StoreError = true,
  StoreUnavailable = true,
}
return stale_or_degraded(obj) or from_ready(obj, failures)
