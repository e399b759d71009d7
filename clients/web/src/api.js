// Kiln's HTTP API (docs/openapi.yaml): create, cancel and retry jobs, and read a job's
// timeline (server-side state no client can read from Firestore). Jobs themselves are read
// live through Firestore instead (jobs.js).

export class ApiError extends Error {
  /** @param {number} status @param {string} code @param {string} message */
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class KilnApi {
  /** @param {string} baseUrl @param {() => Promise<string>} idToken */
  constructor(baseUrl, idToken) {
    this.baseUrl = baseUrl;
    this.idToken = idToken;
  }

  /**
   * @param {{kind: "image" | "model", prompt: string, options?: Record<string, unknown>}} request
   * @returns {Promise<{jobId: string, status: string}>}
   */
  createJob(request, idempotencyKey = crypto.randomUUID()) {
    return this.#call("POST", "/v1/jobs", request, { "Idempotency-Key": idempotencyKey });
  }

  cancel(jobId) {
    return this.#call("POST", `/v1/jobs/${encodeURIComponent(jobId)}:cancel`);
  }

  retry(jobId) {
    return this.#call("POST", `/v1/jobs/${encodeURIComponent(jobId)}:retry`);
  }

  /**
   * When each step of the job happened (owner only): the rows `kiln trace` draws.
   * @param {string} jobId
   * @returns {Promise<import("../../../docs/generated/kiln").JobTimeline>}
   */
  timeline(jobId) {
    return this.#call("GET", `/v1/jobs/${encodeURIComponent(jobId)}/timeline`);
  }

  async #call(method, path, body, headers = {}) {
    let response;
    try {
      response = await fetch(this.baseUrl + path, {
        method,
        headers: {
          Authorization: `Bearer ${await this.idToken()}`,
          ...(body === undefined ? {} : { "Content-Type": "application/json" }),
          ...headers,
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, "network", "Kiln cannot be reached. Check your connection and try again.");
    }
    const payload = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = payload.error ?? {};
      throw new ApiError(response.status, error.code ?? "http_error",
        error.message ?? `The request failed (${response.status}).`);
    }
    return payload;
  }
}
