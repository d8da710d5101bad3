// Drives firstread's (and Orthanc's) DICOMweb services with dicomweb-client,
// the library OHIF's DICOMweb data source uses, in Node (xhr2 provides the
// XMLHttpRequest it calls). Runs a batch of operations from a JSON file and
// writes one result per operation, so that a test starts Node once.
//
// Usage: NODE_PATH=<node_modules> node client.cjs OPS.json RESULTS.json
// Operations: {op: store, url, files: [...], study?}
//             {op: search, url, level: studies|series|instances, study?, series?, params: {...}}
//             {op: retrieve, url, study, series, sop, out, any_syntax}
//             {op: frames, url, study, series, sop, frames: [1], out_prefix, any_syntax}
//             {op: metadata, url, study, series}
//             {op: rendered, url, study, series, sop, out, media_type (image/png)}
'use strict';
global.XMLHttpRequest = require('xhr2');
const fs = require('fs');
const { api } = require('dicomweb-client');

function client(url) {
  return new api.DICOMwebClient({ url, verbose: false });
}

function toArrayBuffer(buffer) {
  return buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength);
}

async function run(op) {
  const c = client(op.url);
  switch (op.op) {
    case 'store': {
      const datasets = op.files.map((f) => toArrayBuffer(fs.readFileSync(f)));
      const options = { datasets };
      if (op.study) options.studyInstanceUID = op.study;
      try {
        const body = await c.storeInstances(options);
        return { ok: true, body: JSON.parse(body) };
      } catch (e) {
        return { ok: false, status: e.status, body: e.response ? JSON.parse(String(e.response)) : null };
      }
    }
    case 'search': {
      const options = { queryParams: op.params || {} };
      if (op.study) options.studyInstanceUID = op.study;
      if (op.series) options.seriesInstanceUID = op.series;
      const fn = { studies: 'searchForStudies', series: 'searchForSeries', instances: 'searchForInstances' }[op.level];
      return { ok: true, body: await c[fn](options) };
    }
    case 'retrieve': {
      const options = { studyInstanceUID: op.study, seriesInstanceUID: op.series, sopInstanceUID: op.sop };
      if (op.any_syntax) options.mediaTypes = [{ mediaType: 'application/dicom', transferSyntaxUID: '*' }];
      const bytes = await c.retrieveInstance(options);
      fs.writeFileSync(op.out, Buffer.from(bytes));
      return { ok: true };
    }
    case 'frames': {
      const options = {
        studyInstanceUID: op.study, seriesInstanceUID: op.series, sopInstanceUID: op.sop, frameNumbers: op.frames,
      };
      if (op.any_syntax) options.mediaTypes = [{ mediaType: 'application/octet-stream', transferSyntaxUID: '*' }];
      const frames = await c.retrieveInstanceFrames(options);
      frames.forEach((f, i) => fs.writeFileSync(op.out_prefix + (i + 1), Buffer.from(f)));
      return { ok: true, count: frames.length };
    }
    case 'metadata':
      return { ok: true, body: await c.retrieveSeriesMetadata({ studyInstanceUID: op.study, seriesInstanceUID: op.series }) };
    case 'rendered': {
      const png = await c.retrieveInstanceRendered({
        studyInstanceUID: op.study, seriesInstanceUID: op.series, sopInstanceUID: op.sop,
        mediaTypes: [{ mediaType: op.media_type || 'image/png' }],
      });
      fs.writeFileSync(op.out, Buffer.from(Array.isArray(png) ? png[0] : png));
      return { ok: true };
    }
    default:
      throw new Error('unknown operation ' + op.op);
  }
}

(async () => {
  const ops = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const results = [];
  for (const op of ops) {
    try {
      results.push(await run(op));
    } catch (e) {
      results.push({ ok: false, status: e.status, error: String(e.message || e),
                     body: e.response ? String(Buffer.from(e.response)).slice(0, 500) : null });
    }
  }
  fs.writeFileSync(process.argv[3], JSON.stringify(results));
})();
