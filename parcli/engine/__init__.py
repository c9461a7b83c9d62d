"""How a forward pass runs fast, kept outside the model.

`policy.choose_engine` is the one table of what runs where; `runners` run a pass (over the
visible cache prefix, or with fixed shapes, CUDA graphs and torch.compile); `packing` swaps the
projections of a loaded transformer for pre-packed ones that compute the same numbers; `devices`
says which device a run asks for and what a dtype costs on it.
"""
