-- Orthanc auto-routing for fcdnode: when an MR series has been stable for StableAge seconds
-- (no new instance), send the whole series to the "fcdnode" modality in one C-STORE job.
-- The node's own results come back into the same study and are not sent again: the SR has
-- Modality SR, and the heatmap Secondary Capture keeps Modality MR but is not an MR Image
-- Storage instance and arrives from the node's AE title. A series that grows after it was sent
-- becomes stable again and is re-sent; the node stores duplicates idempotently and reopens it.

local NODE_MODALITY = 'fcdnode'
local NODE_AET = 'FCDNODE'
local MR_SOP_CLASSES = {
  ['1.2.840.10008.5.1.4.1.1.4'] = true,    -- MR Image Storage
  ['1.2.840.10008.5.1.4.1.1.4.1'] = true,  -- Enhanced MR Image Storage
}

function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] ~= 'MR' then
    return
  end
  -- RestApiGet answers nil (and Orthanc logs why) when the resource is gone.
  local list = RestApiGet('/series/' .. seriesId .. '/instances')
  local instances = list and ParseJson(list) or {}
  if #instances == 0 then
    return
  end
  local md = RestApiGet('/instances/' .. instances[1]['ID'] .. '/metadata?expand')
  local first = md and ParseJson(md) or {}
  if first['RemoteAET'] == NODE_AET or not MR_SOP_CLASSES[first['SopClassUid']] then
    return
  end
  -- Asynchronous: the store runs as an Orthanc job (GET /jobs); Lua is not blocked meanwhile.
  local job = RestApiPost('/modalities/' .. NODE_MODALITY .. '/store',
    DumpJson({ Resources = { seriesId }, Asynchronous = true }, true))
  print('fcdnode-route: series ' .. seriesId .. ' (' .. (tags['SeriesDescription'] or '') ..
    ', ' .. #instances .. ' instances) sent to ' .. NODE_MODALITY .. ': ' .. job)
end
