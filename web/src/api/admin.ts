// The operator routes the gateway's /openapi.json leaves out on purpose: chaos, dead letters
// and the test hooks change the running system, and the contract tests (schemathesis, as an
// admin) must not fuzz them. Typed here by hand, sent through the same client rules
// (token, refresh, Idempotency-Key) as every other call.

import createClient from "openapi-fetch";
import { authMiddleware, type ApiOptions } from "./client";
import type { components } from "./schema";

/** The kit's chaos profile (kit/src/chaos.rs `Profile`): rates are shares 0..1. */
export interface ChaosProfile {
  latency_ms: number;
  latency_max_ms?: number | null;
  latency_rate: number;
  error_rate: number;
  partial_failure_rate: number;
  routes?: string[];
}

/** The card processor's own chaos (services/psp-mock/src/chaos.rs `ProcessorProfile`). */
export interface ProcessorProfile {
  timeout_rate: number;
  timeout_ms: number;
  error_rate: number;
  duplicate_webhook_rate: number;
  reorder_webhooks: boolean;
  reorder_window_ms: number;
  routes?: string[];
}

/** A parked event (kit/src/events/consumer.rs `DeadLetter`). */
export interface DeadLetter {
  id: string;
  consumer: string;
  event_id: string;
  event_type: string;
  error: string;
  attempts: number;
  parked_at: string;
  replayed_at: string | null;
  envelope: Record<string, unknown>;
}

type Json<T> = { content: { "application/json": T } };
type Problem = components["schemas"]["Problem"];
type Answers<T> = { 200: Json<T>; 204: { content?: never }; default: Json<Problem> };
type PathParams<P> = { parameters: { path: P; query?: never; header?: never; cookie?: never } };
type NoParams = { parameters: { path: { service: string }; query?: never; header?: never; cookie?: never } };

export interface AdminPaths {
  "/api/v1/admin/{service}/chaos": NoParams & {
    get: NoParams & { responses: Answers<ChaosProfile> };
    put: NoParams & { requestBody: Json<ChaosProfile>; responses: Answers<ChaosProfile> };
    delete: NoParams & { responses: Answers<never> };
  };
  "/api/v1/admin/psp-mock/chaos": {
    parameters: { query?: never; header?: never; path?: never; cookie?: never };
    get: { parameters: { query?: never; header?: never; path?: never; cookie?: never }; responses: Answers<ProcessorProfile> };
    put: {
      parameters: { query?: never; header?: never; path?: never; cookie?: never };
      requestBody: Json<Partial<ProcessorProfile>>;
      responses: Answers<ProcessorProfile>;
    };
    delete: { parameters: { query?: never; header?: never; path?: never; cookie?: never }; responses: Answers<never> };
  };
  "/api/v1/admin/{service}/dead-letters": NoParams & {
    get: NoParams & { responses: Answers<{ items: DeadLetter[] }> };
  };
  "/api/v1/admin/{service}/dead-letters/{id}/replay": PathParams<{ service: string; id: string }> & {
    post: PathParams<{ service: string; id: string }> & { responses: Answers<{ id: string; outcome: string }> };
  };
}

export function createAdminApi(opts: ApiOptions) {
  const client = createClient<AdminPaths>({ baseUrl: opts.baseUrl ?? "", fetch: opts.fetch });
  client.use(authMiddleware(opts));
  return client;
}
