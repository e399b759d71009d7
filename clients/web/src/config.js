// Runtime configuration, served next to the app as /config.json (see docs/client-contract.md):
// {
//   "mode": "local" | "firebase",
//   "apiUrl": "https://…",                       // Kiln's HTTP API (the ingress function)
//   "firebase": { "projectId", "apiKey", "appId", "authDomain", "storageBucket" },
//   "emulators": {                                 // local mode only
//     "firestore": { "host": "127.0.0.1", "port": 8080 },
//     "storageUrl": "http://127.0.0.1:9023",       // where result.downloadUrl points locally
//     "storageProxy": "/_storage"                  // same-origin proxy (the emulator sends no CORS)
//   }
// }

/** @returns {Promise<any>} */
export async function loadConfig() {
  const response = await fetch("/config.json", { cache: "no-store" });
  if (!response.ok) throw new Error(`Could not load /config.json (${response.status}).`);
  const config = await response.json();
  if (!config.apiUrl || !config.firebase?.projectId) {
    throw new Error("/config.json needs apiUrl and firebase.projectId.");
  }
  config.apiUrl = config.apiUrl.replace(/\/+$/, "");
  return config;
}

/**
 * The URL the browser should load a result from. Locally the Storage emulator sends no CORS
 * headers, so results go through the same-origin proxy of the local web server.
 * @param {any} config
 * @param {string} url
 */
export function resultUrl(config, url) {
  const storage = config.emulators?.storageUrl;
  const proxy = config.emulators?.storageProxy;
  if (storage && proxy && url.startsWith(storage)) return proxy + url.slice(storage.length);
  return url;
}
