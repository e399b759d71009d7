// Live job documents from Firestore (the contract: docs/client-contract.md).
//
// The security rules let a user read only their own jobs, so the list query must filter by
// uid == the signed-in user; a read of someone else's job is denied like a missing one.

import { collection, doc, limit, onSnapshot, orderBy, query, where } from "firebase/firestore";

/** @typedef {import("../../../docs/generated/kiln").Job} Job */
/** @typedef {import("../../../docs/generated/kiln").JobWithId} JobWithId */

/**
 * Calls `onJobs` with the user's newest jobs whenever any of them changes.
 * @param {import("firebase/firestore").Firestore} db
 * @param {string} uid
 * @param {(jobs: JobWithId[]) => void} onJobs
 * @param {(error: Error) => void} onError
 * @returns {() => void} stop listening
 */
export function watchJobs(db, uid, onJobs, onError, max = 50) {
  const q = query(collection(db, "jobs"), where("uid", "==", uid), orderBy("createdAt", "desc"),
    limit(max));
  return onSnapshot(q, (snap) => onJobs(snap.docs.map((d) => ({ id: d.id, ...d.data() }))), onError);
}

/**
 * Calls `onJob` with the job on every change, or with null when it does not exist or is not
 * the user's (the rules deny both alike).
 * @param {(job: JobWithId | null) => void} onJob
 */
export function watchJob(db, jobId, onJob, onError) {
  return onSnapshot(doc(db, "jobs", jobId), (snap) => onJob(snap.exists() ? { id: snap.id, ...snap.data() } : null),
    (error) => (error.code === "permission-denied" ? onJob(null) : onError(error)));
}

export const ACTIVE = new Set(["pending", "processing"]);
export const STATUS_LABELS = {
  pending: "Queued",
  processing: "Working",
  completed: "Ready",
  failed: "Failed",
  canceled: "Canceled",
};
