"""The registration methods: affine, preprocessing onto the model grid, the network, the refinement."""
