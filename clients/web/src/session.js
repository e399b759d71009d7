// Who is signed in, and the ID token that proves it to Kiln's HTTP API.
//
// Local mode (no Auth emulator): the user types a uid (or opens ?uid=alice) and the app mints an
// unsigned emulator token itself, the same token kiln.auth.emulator_id_token makes. Kiln accepts
// such tokens only with KILN_ENV=local; the Firestore emulator applies the security rules to
// it (connectFirestoreEmulator's mockUserToken). Firebase mode uses Firebase Auth.

import { getAuth, onAuthStateChanged, signInAnonymously, signOut } from "firebase/auth";

const UID_KEY = "kiln.uid";

/**
 * @typedef {{ uid: string, idToken: () => Promise<string>, signOut: () => Promise<void> }} Session
 */

function base64url(obj) {
  const bytes = new TextEncoder().encode(JSON.stringify(obj));
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** An unsigned (alg: none) Firebase ID token for `uid`, as the Auth emulator issues them. */
export function emulatorIdToken(uid, projectId, lifetime = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const payload = {
    iss: `https://securetoken.google.com/${projectId}`,
    aud: projectId,
    auth_time: now,
    iat: now,
    exp: now + lifetime,
    sub: uid,
    user_id: uid,
    firebase: { identities: {}, sign_in_provider: "custom" },
  };
  return `${base64url({ alg: "none", typ: "JWT" })}.${base64url(payload)}.`;
}

/** The uid of a local session: ?uid=… (remembered), or the one remembered earlier. */
export function localUid() {
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("uid");
  if (fromUrl) {
    localStorage.setItem(UID_KEY, fromUrl);
    params.delete("uid");
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? `?${query}` : ""));
    return fromUrl;
  }
  return localStorage.getItem(UID_KEY);
}

export function rememberLocalUid(uid) {
  localStorage.setItem(UID_KEY, uid);
}

/** @returns {Session} */
export function localSession(uid, projectId) {
  return {
    uid,
    idToken: async () => emulatorIdToken(uid, projectId),
    signOut: async () => localStorage.removeItem(UID_KEY),
  };
}

/**
 * A Firebase Auth session (deployed apps). Resolves once a user is signed in; this reference
 * app signs in anonymously, a real app would use its own sign-in flow here.
 * @returns {Promise<Session>}
 */
export function firebaseSession(app) {
  const auth = getAuth(app);
  return new Promise((resolve, reject) => {
    const stop = onAuthStateChanged(auth, (user) => {
      if (!user) {
        signInAnonymously(auth).catch(reject);
        return;
      }
      stop();
      resolve({ uid: user.uid, idToken: () => user.getIdToken(), signOut: () => signOut(auth) });
    }, reject);
  });
}
