// Orders containing the seller's products, with "Process" (PAID → PROCESSING) and "Fulfil"
// (→ FULFILLED: the stock is committed and the payment captured).

import { useState } from "preact/hooks";
import { api } from "../../app-context";
import { type Problem, summary } from "../../api/problem";
import { RequireRole } from "../../components/layout";
import { canFulfil, canProcess, type OrderStatus } from "../../lib/orders";
import { Button } from "../../components/ui";
import { OrderList } from "../orders";

export function SellerOrders() {
  return (
    <RequireRole roles={["SELLER", "ADMIN"]}>
      <OrderList title="Orders of my products" actions={(o, reload) => <Actions id={o.id} status={o.status as OrderStatus} reload={reload} />} />
    </RequireRole>
  );
}

function Actions({ id, status, reload }: { id: string; status: OrderStatus; reload: () => void }) {
  const [busy, setBusy] = useState(false);
  const [problem, setProblem] = useState<Problem | null>(null);
  async function act(action: "process" | "fulfill") {
    setBusy(true);
    setProblem(null);
    const path = action === "process" ? "/api/v1/orders/{id}/process" : "/api/v1/orders/{id}/fulfill";
    const { error } = await api.POST(path, { params: { path: { id } } });
    setBusy(false);
    if (error) setProblem(error as Problem);
    else reload();
  }
  return (
    <>
      {canProcess(status) && (
        <Button variant="secondary" busy={busy} onClick={() => act("process")} aria-label={`Process order ${id.slice(-8)}`}>
          Process
        </Button>
      )}
      {canFulfil(status) && (
        <Button busy={busy} onClick={() => act("fulfill")} aria-label={`Fulfil order ${id.slice(-8)}`}>
          Fulfil
        </Button>
      )}
      {problem && (
        <p class="field-error" role="alert">
          {summary(problem)}
        </p>
      )}
    </>
  );
}
