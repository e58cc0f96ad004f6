// pe.v -- one processing element of the PE-array chunk (both dataflows).
//
// PE_TYPE 0 (mac):   term = a * w
// PE_TYPE 1 (shift): term = (-1)^w[W_W-1] * (a << w[W_W-2:0])      (w is a {sign, amount} code)
// PE_TYPE 2 (adder): term = -|a - w|
// All arithmetic is two's complement; the accumulator / partial sum is ACC_W bits and wraps.
//
// Timing (see hw_models/engines/pe_array.py, "Timing contract"): the operand register a_q/v_q
// latches at edge t; the term is accumulated PIPE edges later.
//   OS  (ws = 0): acc <= acc + term          (PIPE 2: a product register r1 in between)
//   WS  (ws = 1): psum <= psum_in + term     (computed at t+1, then a PIPE-deep psum pipeline)
// Both dataflows share one adder; acc_q is the accumulator (OS) or the psum pipeline output (WS).
// out_v/out_last say "acc_q was updated with a valid operand at the last edge" (the finished
// pulse the controller watches); pre_v is the same flag one stage earlier.
`default_nettype none
module pe #(
    parameter integer PE_TYPE = 0,
    parameter integer IN_W    = 8,
    parameter integer W_W     = 8,
    parameter integer ACC_W   = 32,
    parameter integer PIPE    = 1
) (
    input  wire             clk,
    input  wire             rst,
    input  wire             ws,
    input  wire             clr,
    input  wire [IN_W-1:0]  a_in,
    input  wire             v_in,
    input  wire             last_in,
    output reg  [IN_W-1:0]  a_q,
    output reg              v_q,
    output reg              last_q,
    input  wire [W_W-1:0]   w_in,
    input  wire             w_ld,
    output reg  [W_W-1:0]   w_q,
    input  wire [ACC_W-1:0] psum_in,
    output wire [ACC_W-1:0] acc_q,
    output wire             pre_v,
    output reg              out_v,
    output reg              out_last
);
    // ---------------------------------------------------------------- operand registers
    always @(posedge clk) begin
        a_q <= a_in;
        if (w_ld) w_q <= w_in;
        if (rst) begin
            v_q    <= 1'b0;
            last_q <= 1'b0;
        end else begin
            v_q    <= v_in;
            last_q <= last_in;
        end
    end

    // ---------------------------------------------------------------- the term f(a, w)
    wire [ACC_W-1:0] term;
    pe_term #(.PE_TYPE(PE_TYPE), .IN_W(IN_W), .W_W(W_W), .ACC_W(ACC_W)) u_term (
        .a(a_q), .w(w_q), .term(term));

    // ---------------------------------------------------------------- accumulate / psum
    reg [ACC_W-1:0] acc;
    assign acc_q = acc;

    generate
        if (PIPE == 1) begin : g_p1
            wire [ACC_W-1:0] sum = (ws ? psum_in : acc) + term;
            always @(posedge clk) begin
                if (clr) acc <= {ACC_W{1'b0}};
                else if (v_q) acc <= sum;
                if (rst) begin
                    out_v    <= 1'b0;
                    out_last <= 1'b0;
                end else begin
                    out_v    <= v_q;
                    out_last <= last_q;
                end
            end
            assign pre_v = v_q;
        end else begin : g_p2
            reg [ACC_W-1:0] r1;      // OS: product register; WS: first psum stage
            reg v1, l1;
            wire [ACC_W-1:0] sum = (ws ? psum_in : acc) + (ws ? term : r1);
            always @(posedge clk) begin
                r1 <= ws ? sum : term;
                if (clr) acc <= {ACC_W{1'b0}};
                else if (v1) acc <= ws ? r1 : sum;
                if (rst) begin
                    v1 <= 1'b0; l1 <= 1'b0; out_v <= 1'b0; out_last <= 1'b0;
                end else begin
                    v1 <= v_q; l1 <= last_q; out_v <= v1; out_last <= l1;
                end
            end
            assign pre_v = v1;
        end
    endgenerate
endmodule
`default_nettype wire
