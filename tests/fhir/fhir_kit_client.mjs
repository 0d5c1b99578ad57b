// A real npm FHIR client (fhir-kit-client) reading a patient end to end; prints one JSON
// summary line for tests/fhir/test_clients.py. Args: <module dir> <base url> <token> <ins>.
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [moduleDir, baseUrl, token, ins] = process.argv.slice(2);
const { Client } = await import(
  pathToFileURL(join(moduleDir, 'node_modules/fhir-kit-client/dist/index.js')).href);
const client = new Client({ baseUrl, customHeaders: { Authorization: `Bearer ${token}` } });

const capability = await client.capabilityStatement();
const found = await client.search({
  resourceType: 'Patient',
  searchParams: { identifier: `urn:oid:1.2.250.1.213.1.4.10|${ins}` },
});
const patient = await client.read({ resourceType: 'Patient', id: found.entry[0].resource.id });
let page = await client.search({
  resourceType: 'Observation',
  searchParams: { patient: patient.id, _count: 5, _sort: '-date' },
});
const observations = [];
const total = page.total;
while (page) {
  for (const e of page.entry ?? []) observations.push(e.resource);
  page = await client.nextPage({ bundle: page });
}
const reports = await client.search({
  resourceType: 'DiagnosticReport',
  searchParams: { patient: patient.id, _include: 'DiagnosticReport:result' },
});
let refused = null;
try {
  await client.search({ resourceType: 'Observation', searchParams: { colour: 'red' } });
} catch (err) {
  refused = { status: err.response?.status, outcome: err.response?.data?.resourceType };
}
console.log(JSON.stringify({
  fhirVersion: capability.fhirVersion,
  patient: { id: patient.id, identifier: patient.identifier, family: patient.name[0].family },
  total,
  observations: observations.map((o) => ({ id: o.id, loinc: o.code.coding[0].code,
    unit: o.valueQuantity?.system, original: o.code.coding[1]?.code })),
  reportEntries: reports.entry.map((e) => e.search.mode),
  refused,
}));
