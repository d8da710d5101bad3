#!/usr/bin/env node
// Reads a firstread SR with the code OHIF v3 runs, as published on npm:
//  - the SR reaches OHIF as DICOM JSON (WADO-RS metadata, as from a PACS's
//    DICOMweb service; here DCMTK's dcm2json writes it) and dcmjs naturalises
//    it, as OHIF's DICOMweb data source does. (dcmjs's own binary parser
//    decodes text inside sequences as Latin-1 whatever the Specific Character
//    Set, so a UTF-8 label would come out garbled on that path.)
//  - OHIF's SR extension (@ohif/extension-cornerstone-dicom-sr, its built UMD)
//    turns the SR into a display set: its measurements, their text labels, and
//    which image and frame each one is shown on (what the SR viewport draws);
//  - the cornerstone adapters' MeasurementReport.generateToolState (what OHIF
//    calls to hydrate an SR into editable measurements) gives each RectangleROI
//    annotation its label and world points, mapped back here to image pixels.
// The parts of OHIF's application around the extension (its services, React,
// the i18n module) are given as the smallest objects the extension calls;
// everything that reads the SR is the libraries' own code.
//
// Usage: node check_sr.cjs SR.dcm EXPECTED.json IMAGE.dcm...
// EXPECTED.json: [{label, sop_instance_uid, frame (1-based, 0 = single-frame), x1, y1, x2, y2}]
// Prints a JSON summary; exits 1 listing every expectation that failed.
'use strict';
const fs = require('fs');
const Module = require('module');

// --- the OHIF application around the extension (services it calls, not SR parsing)
const sopClassDictionary = {
  BasicTextSR: '1.2.840.10008.5.1.4.1.1.88.11',
  EnhancedSR: '1.2.840.10008.5.1.4.1.1.88.22',
  ComprehensiveSR: '1.2.840.10008.5.1.4.1.1.88.33',
  Comprehensive3DSR: '1.2.840.10008.5.1.4.1.1.88.34',
};
let guidCounter = 0;
const host = {
  '@ohif/core': {
    utils: {
      sortStudyInstances: (instances) => instances,
      sortDisplaySetsCopy: (sets) => [...sets],
      guid: () => `displayset-${++guidCounter}`,
      sopClassDictionary,
    },
    classes: {
      MetadataProvider: {
        getUIDsFromImageID: (imageId) => {
          const [, sop, frame] = imageId.split(':');
          return { SOPInstanceUID: sop, frameNumber: Number(frame) };
        },
      },
    },
    log: { info() {}, warn() {}, error() {} },
  },
  '@ohif/extension-cornerstone': {
    Enums: { CORNERSTONE_3D_TOOLS_SOURCE_NAME: 'Cornerstone3DTools', CORNERSTONE_3D_TOOLS_SOURCE_VERSION: '0.1' },
  },
  '@ohif/i18n': { t: (s) => s },
  '@ohif/ui-next': {},
  '@ohif/core/src/contextProviders/SystemProvider': {},
};
// The libraries log to the console: keep stdout for this script's JSON.
const stdoutWrite = process.stdout.write.bind(process.stdout);
console.log = console.info = console.debug = (...args) => console.error(...args);

// cornerstone's annotation state tests its argument against this browser class.
globalThis.HTMLDivElement = globalThis.HTMLDivElement || class HTMLDivElement {};
const load = Module._load;
Module._load = function (request) {
  if (Object.prototype.hasOwnProperty.call(host, request)) return host[request];
  return load.apply(this, arguments);
};

const dcmjs = require('dcmjs');
let csCore, adapters, ohifSr;

// cornerstone 5 is published as ES modules only. Node.js 20 require()s them;
// Debian 12's nodejs (18) cannot, so they are import()ed here, by the path
// require() resolves through NODE_PATH (import() does not read NODE_PATH),
// and the extension's require() calls are handed those same module objects
// (esm_syntax.mjs: what Node.js 18 also needs to load their dependencies).
async function loadLibraries() {
  const { pathToFileURL } = require('url');
  if (Module.register) Module.register(pathToFileURL(`${__dirname}/esm_syntax.mjs`).href);
  for (const name of ['@cornerstonejs/core', '@cornerstonejs/tools', '@cornerstonejs/adapters']) {
    host[name] = await import(pathToFileURL(require.resolve(name)).href);
  }
  csCore = host['@cornerstonejs/core'];
  adapters = host['@cornerstonejs/adapters'];
  ohifSr = require('@ohif/extension-cornerstone-dicom-sr');
}

function readDicom(path) {
  const bytes = fs.readFileSync(path);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const dict = dcmjs.data.DicomMessage.readFile(buffer, { ignoreErrors: true });
  return dcmjs.data.DicomMetaDictionary.naturalizeDataset(dict.dict);
}

function readDicomJson(path) {
  const result = require('child_process').spawnSync('dcm2json', [path], { maxBuffer: 64 << 20 });
  if (result.status !== 0) throw new Error(`dcm2json ${path}: ${result.stderr}`);
  return dcmjs.data.DicomMetaDictionary.naturalizeDataset(JSON.parse(result.stdout.toString('utf8')));
}

const num = (v, fallback) => (v === undefined || v === null || v === '' ? fallback : Number(v));
const arr = (v) => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

async function main() {
  const [srPath, expectedPath, ...imagePaths] = process.argv.slice(2);
  if (!srPath || !expectedPath || imagePaths.length === 0) {
    console.error('usage: check_sr.cjs SR.dcm EXPECTED.json IMAGE.dcm...');
    process.exit(2);
  }
  await loadLibraries();
  const expected = JSON.parse(fs.readFileSync(expectedPath, 'utf8'));
  const sr = readDicomJson(srPath);
  const images = imagePaths.map(readDicom);

  // imageIds as OHIF's stack viewports name frames: one per frame, frame numbers from 1.
  const imageIdMap = {};      // "SOP:frame" -> imageId (the map OHIF builds)
  const planeByImageId = {};
  const instanceByImageId = {};
  const displaySets = new Map();
  for (const image of images) {
    const frames = num(image.NumberOfFrames, 1);
    const spacing = arr(image.PixelSpacing).map(Number);
    const orientation = arr(image.ImageOrientationPatient).map(Number);
    for (let frame = 1; frame <= frames; ++frame) {
      const imageId = `firstread:${image.SOPInstanceUID}:${frame}`;
      imageIdMap[`${image.SOPInstanceUID}:${frame}`] = imageId;
      // Images without patient geometry (photographs, secondary captures) get
      // cornerstone's defaults: origin 0, identity orientation, 1 mm pixels.
      planeByImageId[imageId] = {
        frameOfReferenceUID: image.FrameOfReferenceUID || `for-${image.SeriesInstanceUID}`,
        rows: image.Rows,
        columns: image.Columns,
        imagePositionPatient: arr(image.ImagePositionPatient).length === 3 ? arr(image.ImagePositionPatient).map(Number) : [0, 0, 0],
        rowCosines: orientation.length === 6 ? orientation.slice(0, 3) : [1, 0, 0],
        columnCosines: orientation.length === 6 ? orientation.slice(3, 6) : [0, 1, 0],
        rowPixelSpacing: spacing.length === 2 ? spacing[0] : 1,
        columnPixelSpacing: spacing.length === 2 ? spacing[1] : 1,
        pixelSpacing: spacing.length === 2 ? spacing : [1, 1],
      };
      instanceByImageId[imageId] = image;
    }
    const key = image.SeriesInstanceUID;
    if (!displaySets.has(key))
      displaySets.set(key, { displaySetInstanceUID: `image-series-${displaySets.size + 1}`, SeriesInstanceUID: key,
                             FrameOfReferenceUID: image.FrameOfReferenceUID, images: [], imageIds: [] });
    const set = displaySets.get(key);
    set.images.push(image);
    for (let frame = 1; frame <= frames; ++frame) set.imageIds.push(`firstread:${image.SOPInstanceUID}:${frame}`);
  }
  csCore.metaData.addProvider((type, imageId) => {
    if (!planeByImageId[imageId]) return undefined;
    if (type === 'imagePlaneModule') return planeByImageId[imageId];
    if (type === 'instance') return instanceByImageId[imageId];
    if (type === 'imagePixelModule') return { rows: planeByImageId[imageId].rows, columns: planeByImageId[imageId].columns };
    return undefined;
  }, 10000);

  const failures = [];
  const summary = { ohif_display: [], adapters_hydrated: [] };

  // --- OHIF's SR display set (what the SR viewport draws, and on which image)
  const dataSource = { getImageIdsForDisplaySet: (set) => set.imageIds, retrieve: { bulkDataURI: async () => new ArrayBuffer(0) } };
  const services = {
    displaySetService: {
      activeDisplaySets: [...displaySets.values()],
      subscribe: () => ({ unsubscribe() {} }),
      EVENTS: { DISPLAY_SETS_ADDED: 'event::displaySetsAdded' },
      getDisplaySetByUID: (uid) => [...displaySets.values()].find((s) => s.displaySetInstanceUID === uid),
      getDisplaySetsBy: (f) => [...displaySets.values()].filter(f),
    },
    // OHIF's cornerstone extension maps these annotation types (its measurement mappings).
    measurementService: { getSourceMappings: () => [{ annotationType: 'RectangleROI' }] },
    customizationService: { getCustomization: () => undefined },
  };
  const extension = ohifSr.default || ohifSr;
  const handlers = extension.getSopClassHandlerModule({ servicesManager: { services }, extensionManager: { getDataSources: () => [dataSource] } });
  const handler = handlers.find((h) => h.sopClassUids.includes(sr.SOPClassUID));
  if (!handler) failures.push(`OHIF's SR extension has no handler for SOP class ${sr.SOPClassUID}`);
  let srDisplaySet = null;
  if (handler) {
    srDisplaySet = handler.getDisplaySetsFromSeries([{ ...sr, imageId: 'firstread-sr' }])[0];
    if (!srDisplaySet.isImagingMeasurementReport) failures.push('OHIF does not take the SR as a TID 1500 Imaging Measurement Report (it would show text only)');
    await srDisplaySet.load();
    if (!srDisplaySet.isRehydratable) failures.push('OHIF marks the SR as not rehydratable (no measurement its tools can edit)');
  }
  const measurements = srDisplaySet ? srDisplaySet.measurements : [];
  for (const m of measurements)
    summary.ohif_display.push({ labels: m.labels, imageId: m.imageId || null, loaded: m.loaded,
                                graphicType: m.coords[0] && m.coords[0].GraphicType, points: m.coords[0] && m.coords[0].GraphicData });
  if (measurements.length !== expected.length)
    failures.push(`OHIF shows ${measurements.length} measurement(s), expected ${expected.length}`);

  // --- the adapters' hydration
  const report = adapters.adaptersSR.Cornerstone3D.MeasurementReport;
  const toolState = report.generateToolState(sr, imageIdMap, csCore.metaData);
  const rectangles = toolState.RectangleROI || [];
  for (const state of rectangles) {
    const imageId = state.annotation.metadata.referencedImageId;
    const pixels = state.annotation.data.handles.points.map((p) => csCore.utilities.worldToImageCoords(imageId, p));
    summary.adapters_hydrated.push({ label: state.annotation.data.label, imageId, frameNumber: state.annotation.data.frameNumber, pixels });
  }
  if (rectangles.length !== expected.length)
    failures.push(`the adapters hydrate ${rectangles.length} RectangleROI annotation(s) (of ${Object.keys(toolState).join(', ') || 'no tool'}), expected ${expected.length}`);

  const close = (a, b) => Math.abs(a - b) < 1e-3;
  expected.forEach((want, i) => {
    const which = `finding ${i + 1} ('${want.label}')`;
    const imageId = `firstread:${want.sop_instance_uid}:${want.frame || 1}`;
    const rect = [[want.x1, want.y1], [want.x2, want.y1], [want.x2, want.y2], [want.x1, want.y2], [want.x1, want.y1]].flat();
    const shown = measurements[i];
    if (shown) {
      if (!shown.loaded || shown.imageId !== imageId)
        failures.push(`${which}: OHIF shows it on ${shown.imageId || 'no image'}, expected ${imageId}`);
      if (!shown.labels.some((l) => l.label === want.label))
        failures.push(`${which}: OHIF's text lines ${JSON.stringify(shown.labels)} lack the label`);
      const points = Array.from(shown.coords[0].GraphicData);
      if (shown.coords[0].GraphicType !== 'POLYLINE' || points.length !== rect.length || !points.every((v, k) => close(v, rect[k])))
        failures.push(`${which}: OHIF draws ${shown.coords[0].GraphicType} ${JSON.stringify(points)}, expected POLYLINE ${JSON.stringify(rect)}`);
    }
    const hydrated = rectangles[i];
    if (hydrated) {
      const got = summary.adapters_hydrated[i];
      if (got.label !== want.label) failures.push(`${which}: hydrated with label ${JSON.stringify(got.label)}`);
      if (got.imageId !== imageId) failures.push(`${which}: hydrated on ${got.imageId}, expected ${imageId}`);
      const xs = got.pixels.map((p) => p[0]), ys = got.pixels.map((p) => p[1]);
      const box = [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)];
      if (!close(box[0], want.x1) || !close(box[1], want.y1) || !close(box[2], want.x2) || !close(box[3], want.y2))
        failures.push(`${which}: hydrated rectangle ${JSON.stringify(box)} in pixels, expected ${JSON.stringify([want.x1, want.y1, want.x2, want.y2])}`);
    }
  });
  summary.failures = failures;
  stdoutWrite(JSON.stringify(summary, null, 1) + '\n');
  process.exit(failures.length ? 1 : 0);
}

main().catch((error) => {
  console.error(`check_sr: ${error.stack || error}`);
  process.exit(1);
});
